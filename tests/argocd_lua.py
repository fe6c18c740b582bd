"""Argo CD's health checks (operator/aistack/argocd/<Kind>/health.lua) run the way Argo CD
runs them: Lua 5.1 (gopher-lua's language) with only the libraries Argo CD opens for a
health script, base, table, package and a "safe" os with time and date, and no string
library, so neither ``string.format`` nor ``("x"):upper()`` works (Argo CD's
util/lua/lua.go, unless ``useOpenLibs`` is set for the kind, which the project does not ask
of its users). The unit tests and the end-to-end tests share it; the end-to-end tests also
run the same cases through Argo CD's own evaluator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "operator" / "aistack" / "argocd"
CASES = ROOT / "tests" / "argocd"
KINDS = ("AIStack", "LicensePolicy")
GROUP = "aistack.dev"


def script(kind: str) -> Path:
    return SCRIPTS / kind / "health.lua"


def health_key(kind: str) -> str:
    """The argocd-cm key of a kind's health check."""
    return f"resource.customizations.health.{GROUP}_{kind}"


#: gopher-lua's base library (baselib.go's baseFuncs, plus what OpenBase sets itself).
BASE = [
    "assert",
    "collectgarbage",
    "dofile",
    "error",
    "getfenv",
    "getmetatable",
    "load",
    "loadfile",
    "loadstring",
    "next",
    "pcall",
    "print",
    "rawequal",
    "rawget",
    "rawset",
    "select",
    "setfenv",
    "setmetatable",
    "tonumber",
    "tostring",
    "type",
    "unpack",
    "xpcall",
    "module",
    "require",
    "newproxy",
    "ipairs",
    "pairs",
    "_VERSION",
]

_SANDBOX = """
local base, script_text, obj = ...
local env = {}
for _, name in ipairs(base) do env[name] = _G[name] end
env._G = env
env.table = table
env.package = package
-- Argo CD's safe os: time and date only; require("os") gives the same.
env.os = {time = os.time, date = os.date}
env.require = function(name)
  if name == "os" then return env.os end
  error("module '" .. tostring(name) .. "' not found")
end
env.obj = obj
-- Without the string library strings have no methods either.
debug.setmetatable("", nil)
local chunk, err = loadstring(script_text, "=health.lua")
if chunk == nil then error(err) end
setfenv(chunk, env)
return chunk()
"""


def run_health(obj: dict[str, Any], text: str) -> dict[str, str]:
    """Run a health script over ``obj`` in Argo CD's sandbox; its returned table."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    run = lua.eval("function(...) " + _SANDBOX + " end")
    result = run(
        lua.table_from(BASE), text, lua.table_from(obj, recursive=True) if obj else lua.table()
    )
    return {str(k): str(v) for k, v in result.items()}


def health(obj: dict[str, Any], kind: str = "AIStack") -> dict[str, str]:
    return run_health(obj, script(kind).read_text())


def cases(kind: str) -> list[dict[str, Any]]:
    """The kind's health_test.yaml cases, each with its sample object read in."""
    folder = CASES / kind
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    return [
        {**case, "object": yaml.safe_load((folder / case["inputPath"]).read_text())}
        for case in tests
    ]


def one_line(text: str) -> str:
    return " ".join(text.split())
