"""The simulator stays independent of the product and starts from its command line."""

import ast
from pathlib import Path

import simulator
from simulator.__main__ import parse_args
from simulator.functions import FUNCTIONS, resolve

SIMULATOR_DIR = Path(simulator.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_simulator_imports_nothing_from_broadcasts():
    offenders = {
        f"{path.name}: {module}"
        for path in SIMULATOR_DIR.rglob("*.py")
        for module in _imported_modules(path)
        if module.split(".")[0] in {"broadcasts", "flows", "tasks", "deployments"}
    }
    assert not offenders, f"the simulator must not import the product: {sorted(offenders)}"


def test_simulator_ships_the_oasis_cap_schema_with_its_notice():
    xsd = (SIMULATOR_DIR / "schemas" / "CAP-v1.2.xsd").read_text()
    assert "Copyright OASIS Open 2010" in xsd


def test_simulator_stands_in_for_eight_proxies_and_the_canary():
    assert sorted(FUNCTIONS) == sorted(
        [f"{network}-{n}-proxy" for network in ("ee", "three", "o2", "vodafone") for n in (1, 2)]
        + ["canary"]
    )


def test_prefixed_name_resolves_and_bare_name_does_not_when_a_prefix_is_set():
    prefix = "arn:aws:lambda:eu-west-2:123456789012:function:"
    assert resolve(f"{prefix}ee-1-proxy", prefix).name == "ee-1-proxy"
    assert resolve("ee-1-proxy", prefix) is None
    assert resolve(f"{prefix}ee-3-proxy", prefix) is None


def test_prefix_defaults_to_the_environment_variable():
    args = parse_args([], environ={"CBC_PROXY_FUNCTION_PREFIX": "prod-"})
    assert (args.host, args.port, args.prefix) == ("127.0.0.1", 9001, "prod-")


def test_command_line_prefix_overrides_the_environment():
    args = parse_args(["--prefix", "", "--port", "0"], environ={"CBC_PROXY_FUNCTION_PREFIX": "x-"})
    assert (args.port, args.prefix) == (0, "")
