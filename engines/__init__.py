"""Sandboxed script engines (Lua on lupa, JavaScript on quickjs-ng) behind one interface."""
