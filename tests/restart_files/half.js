// Exports its state but cannot take it back: refused when loaded.
exports.work = function () { return 1; };
exports.polyspell_state = function () { return {}; };
