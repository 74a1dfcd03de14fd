let n = 0;
exports.boom = function (p) { n++; const t = []; for (let i = 0; ; i++) t.push("x".repeat(100) + i); };
exports.deep = function (p) { function f(x) { return 1 + f(x); } return f(1); };
exports.count = function (p) { n++; return n; };
