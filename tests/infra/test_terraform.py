"""The Terraform modules, checked without Terraform or a cloud: shape, style, agreement with code.

GIVEN infra/terraform/{aws,gcp,azure} and the multi_cloud example, parsed by python-hcl2,
THEN every file parses, the modules follow STYLE.md habit 18 (four files, typed and described
variables, outputs through try(), no :latest, no nested ternaries, main resources named this),
AND what the modules name agrees with what the code defines: Lambda handlers and Cloud Functions
entry points exist, the environment the front doors read is set, the worker's port, health path,
token variable and Batch command match the Dockerfile and gpu_containers/worker.py, and every
target the modules export is a valid core.config.Target with its backend's option keys.
"""

from __future__ import annotations

import ast
import csv
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from core.backends import aca, aci, cloudrun
from core.cli.package import BUNDLES
from core.cli.platforms import (
    AZURE_PYTHON,
    DEFAULT_PLATFORMS,
    GCF_RUNTIMES,
    LAMBDA_ARCHITECTURES,
    LAMBDA_RUNTIMES,
)
from core.cli.tfoutputs import OUTPUT_NAME
from core.config import Target
from core.frontdoor.jobs import RESULTS_PREFIX
from core.wire import staging
from functions._runtime import CONFIG_ENV
from gpu_containers.worker import build_parser

REPO = Path(__file__).parents[2]
TF_ROOT = REPO / "infra" / "terraform"
CLOUDS = ("aws", "gcp", "azure")
MODULES = (*CLOUDS, "examples/multi_cloud")
STANDARD_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf")
DOCKERFILE = (REPO / "gpu_containers" / "Dockerfile").read_text()
_VAR_REF = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")


def _expr(value: Any) -> str:
    """An attribute's expression, without the ``${...}`` python-hcl2 wraps around it."""
    match = re.fullmatch(r"\$\{(.*)\}", str(value), flags=re.S)
    return match.group(1) if match else str(value)


def _first(block: Any) -> dict[str, Any]:
    return block[0] if isinstance(block, list) else block


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _default(tf: Any, module: str, variable: str) -> Any:
    return tf(module).variables[variable]["default"]


def _csv_column(path: Path, column: str) -> set[str]:
    with path.open() as f:
        return {row[column] for row in csv.DictReader(f)}


# ------------------------------------------------------------------------------------ structure


def test_every_tf_file_parses(parse_tf: Any) -> None:
    files = sorted(TF_ROOT.rglob("*.tf"))
    assert len(files) >= 4 * len(MODULES)
    for path in files:
        assert isinstance(parse_tf(path), dict), path


@pytest.mark.parametrize("module", MODULES)
def test_module_has_the_standard_four_files_and_a_readme(module: str) -> None:
    folder = TF_ROOT / module
    missing = [f for f in STANDARD_FILES if not (folder / f).is_file()]
    assert not missing, f"{module} lacks {missing}"
    if module in CLOUDS:
        readme = (folder / "README.md").read_text()
        assert "```hcl" in readme and "checkov" in readme.lower()


@pytest.mark.parametrize("module", MODULES)
def test_every_variable_is_typed_described_and_used(tf: Any, module: str) -> None:
    m = tf(module)
    assert m.variables
    others = "\n".join(text for name, text in m.text.items() if name != "variables.tf")
    for name, body in m.variables.items():
        assert body.get("type"), f"{module}: variable {name} has no type"
        assert len(str(body.get("description", ""))) > 10, f"{module}: variable {name}: describe it"
        assert f"var.{name}" in others, f"{module}: variable {name} is declared but never used"


@pytest.mark.parametrize("module", MODULES)
def test_every_var_reference_is_declared(tf: Any, module: str) -> None:
    m = tf(module)
    used = set(_VAR_REF.findall(m.all_text))
    assert used - set(m.variables) == set(), f"{module}: undeclared variables"


@pytest.mark.parametrize("module", MODULES)
def test_outputs_are_described_and_go_through_try(tf: Any, module: str) -> None:
    m = tf(module)
    assert OUTPUT_NAME in m.outputs, f"{module} must export {OUTPUT_NAME} for core/cli/tfoutputs.py"
    for name, body in m.outputs.items():
        assert body.get("description"), f"{module}: output {name} has no description"
        assert _expr(body["value"]).lstrip().startswith("try("), f"{module}: output {name}"


@pytest.mark.parametrize("module", CLOUDS)
def test_main_resources_are_named_this(tf: Any, module: str) -> None:
    names = [name for _, name in tf(module).resources]
    assert names.count("this") >= 3


@pytest.mark.parametrize("module", MODULES)
def test_no_nested_ternaries_and_no_latest_images(tf: Any, module: str) -> None:
    m = tf(module)
    for doc in m.files.values():
        for text in _strings(doc):
            assert _expr(text).count(" ? ") <= 1, f"{module}: nested ternary in {text!r}"
    assert not re.search(r":latest\b", m.all_text)


@pytest.mark.parametrize("module", CLOUDS)
def test_image_tags_refuse_latest(tf: Any, module: str) -> None:
    variables = tf(module).variables
    tagged = [v for n, v in variables.items() if n in ("worker_image_tag", "worker_image")]
    assert tagged, f"{module}: the worker image tag must be a variable"
    for body in tagged:
        conditions = " ".join(str(_first(v).get("condition")) for v in body["validation"])
        assert '"latest"' in conditions


def test_example_composes_every_module_optionally(tf: Any) -> None:
    modules = tf("examples/multi_cloud").modules
    assert {body["source"] for body in modules.values()} == {f"../../{c}" for c in CLOUDS}
    for name, body in modules.items():
        assert f"var.enable_{name}" in _expr(body["count"])


# ----------------------------------------------------------------------- entry points and env


def test_lambda_handlers_exist(tf: Any) -> None:
    handlers = [f["handler"] for f in tf("aws").locals["functions"].values()]
    assert len(handlers) == 3
    for handler in handlers:
        module, attr = handler.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attr)), handler
    function = tf("aws").resource("aws_lambda_function")
    assert _expr(function["handler"]) == "each.value.handler"


def test_aws_http_api_and_job_queue_match_the_handlers(tf: Any) -> None:
    m = tf("aws")
    assert m.resource("aws_apigatewayv2_route")["route_key"] == "ANY /{proxy+}"
    assert m.resource("aws_apigatewayv2_stage")["name"] == "$default"
    assert m.resource("aws_apigatewayv2_integration")["payload_format_version"] == "2.0"
    mapping = m.resource("aws_lambda_event_source_mapping", "jobs")
    assert mapping["function_response_types"] == ["ReportBatchItemFailures"]
    assert "redrive_policy" in m.resource("aws_sqs_queue", "jobs")
    queue = _first(m.resource("aws_s3_bucket_notification", "inputs")["queue"])
    assert _expr(queue["filter_prefix"]) == "local.jobs_prefix"
    assert m.locals["jobs_prefix"] == "jobs/"
    assert f"/{RESULTS_PREFIX}*" in m.text["main.tf"]  # the job runner writes results there


def test_gcp_entry_points_exist() -> None:
    source = (REPO / "functions" / "gcp" / "main.py").read_text()
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    assert {"http_front_door", "storage_job", "control_loop"} <= defined
    main_py = dict(next(b for b in BUNDLES if b.extra == "gcp").root_files)
    assert main_py == {"main.py": "functions/gcp/main.py"}


def test_gcp_functions_use_those_entry_points(tf: Any) -> None:
    m = tf("gcp")
    source = (REPO / "functions" / "gcp" / "main.py").read_text()
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    entry_points = {f["entry_point"] for f in m.locals["functions"].values()}
    assert entry_points <= defined
    assert m.locals["storage_event"] == "google.cloud.storage.object.v1.finalized"
    assert m.locals["storage_event"] in source


def test_azure_app_root_and_settings_match_function_app(tf: Any) -> None:
    app = REPO / "functions" / "azure" / "function_app.py"
    assert app.is_file() and (REPO / "functions" / "azure" / "host.json").is_file()
    azure = dict(next(b for b in BUNDLES if b.extra == "azure").root_files)
    assert set(azure) == {"function_app.py", "host.json"}
    read_by_code = set(re.findall(r"\b(GPUFAN_[A-Z_]+)\b", app.read_text()))
    assert {"GPUFAN_STORAGE", "GPUFAN_JOBS_CONTAINER", "GPUFAN_JOBS_QUEUE"} <= read_by_code
    skeleton, _ = _skeleton(tf("azure").text["main.tf"])
    settings = skeleton[skeleton.index("app_settings = merge(") :]
    first_map = settings[settings.index("{") + 1 :]
    keys = set(_keys(first_map[: _block_end(first_map, 0) - 1]))
    assert read_by_code <= keys, f"app settings missing {read_by_code - keys}"
    assert "(var.worker_token_env) =" in settings


@pytest.mark.parametrize("module", CLOUDS)
def test_front_doors_get_config_and_worker_token(tf: Any, module: str) -> None:
    text = tf(module).text["main.tf"]
    assert re.search(rf"\b{CONFIG_ENV}\s*=", text), f"{module} does not set {CONFIG_ENV}"
    # The worker's --token-env default, the ACI backend's variable and the modules' default agree.
    worker_default = build_parser().get_default("token_env")
    assert worker_default == aci.TOKEN_VARIABLE == _default(tf, module, "worker_token_env")
    assert re.search(r"var\.worker_token_env", text)


# ------------------------------------------------------------------------------- worker image


def test_worker_port_and_health_match_the_dockerfile(tf: Any) -> None:
    port = re.search(r"^EXPOSE\s+(\d+)", DOCKERFILE, flags=re.M)
    assert port and "/v2/health/ready" in DOCKERFILE
    for module in ("gcp", "azure"):
        local = tf(module).locals
        assert str(local["worker_port"]) == port.group(1)
        assert local["worker_health_path"] == "/v2/health/ready"
        assert local["worker_live_path"] == "/v2/health/live"
    cmd = json.loads(re.search(r"^CMD\s+(.+)$", DOCKERFILE, flags=re.M).group(1))
    assert cmd[cmd.index("--port") + 1] == port.group(1)


def test_batch_command_is_what_the_worker_accepts(tf: Any) -> None:
    m = tf("aws")
    command = m.locals["batch_command"]
    args = build_parser().parse_args(command)
    assert args.batch and args.model_repo == "${local.models_url}"
    assert m.locals["models_url"].startswith('s3://${aws_s3_bucket.this["models"]')
    assert json.loads(re.search(r"^ENTRYPOINT\s+(.+)$", DOCKERFILE, flags=re.M).group(1)) == [
        "gpufan",
        "worker",
    ]
    assert re.search(r"\bcommand\s*=\s*local\.batch_command", m.text["main.tf"])
    for kind in ("GPU", "VCPU", "MEMORY"):
        assert f'"{kind}"' in m.text["main.tf"]


def test_batch_capacity_is_gpu_spot_and_on_demand(tf: Any) -> None:
    m = tf("aws")
    text = m.text["main.tf"]
    assert 'image_type = "ECS_AL2023_NVIDIA"' in text
    assert '"SPOT_PRICE_CAPACITY_OPTIMIZED"' in text and 'type = "SPOT"' in text
    assert "aws_batch_job_queue" in {kind for kind, _ in m.resources}


def test_cloud_run_worker_is_a_gpu_service(tf: Any) -> None:
    m = tf("gcp")
    template = _first(m.resource("google_cloud_run_v2_service")["template"])
    assert "gpu_zonal_redundancy_disabled" in template
    assert _first(template["node_selector"])["accelerator"] == "${var.worker.accelerator}"
    resources = _first(_first(template["containers"])["resources"])
    assert resources["cpu_idle"] in (False, "false")
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    # The variable's floor is the backend's: cloudrun.GPU_MINIMUMS (Cloud Run's GPU docs).
    worker = m.variables["worker"]
    conditions = " ".join(str(_first(v)["condition"]) for v in worker["validation"])
    cpu, memory = cloudrun.GPU_MINIMUMS["nvidia-l4"]
    assert f"var.worker.cpu >= {cpu:g}" in conditions
    assert f"var.worker.memory_gib >= {memory:g}" in conditions
    assert 'accelerator                   = optional(string, "nvidia-l4")' in m.text["variables.tf"]


def test_container_app_runs_on_a_serverless_gpu_profile(tf: Any) -> None:
    m = tf("azure")
    env = m.resource("azurerm_container_app_environment")
    profiles = {_expr(p["workload_profile_type"]) for p in env["workload_profile"]}
    assert "var.aca.workload_profile_type" in profiles
    assert 'optional(string, "Consumption-GPU-NC8as-T4")' in m.text["variables.tf"]
    ingress = _first(m.resource("azurerm_container_app")["ingress"])
    assert _expr(ingress["target_port"]) == "local.worker_port"


# -------------------------------------------------------------------------------- the targets


def _string_end(text: str, i: int) -> int:
    """Index after the HCL string literal opening at ``text[i]`` (interpolations may nest)."""
    i += 1
    while text[i] != '"':
        if text[i] == "\\":
            i += 2
        elif text.startswith("${", i):
            i = _block_end(text, i + 2)
        else:
            i += 1
    return i + 1


def _block_end(text: str, i: int) -> int:
    """Index after the ``}`` closing a block whose ``{`` ends just before ``text[i]``."""
    depth = 1
    while depth:
        if text[i] == '"':
            i = _string_end(text, i)
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return i


def _skeleton(text: str) -> tuple[str, list[str]]:
    """HCL text with comments dropped and each string literal replaced by ``"<n>"``."""
    out: list[str] = []
    literals: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            j = _string_end(text, i)
            literals.append(text[i + 1 : j - 1])
            out.append(f'"{len(literals) - 1}"')
            i = j
        elif text[i] == "#":
            i = text.find("\n", i)
        else:
            out.append(text[i])
            i += 1
    return "".join(out), literals


def _keys(body: str) -> dict[str, int]:
    """Top-level ``key =`` names of an object body (no strings left), with their offsets."""
    keys, depth = {}, 0
    for m in re.finditer(r"[{}\[\]()]|\b([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)", body):
        token = m.group(0)
        if token in "{[(":
            depth += 1
        elif token in "}])":
            depth -= 1
        elif depth == 0:
            keys[m.group(1)] = m.end()
    return keys


def _exported_targets(tf: Any, module: str) -> list[tuple[str, set[str], set[str]]]:
    """(backend, attributes, option keys) of every object in the module's gpufan_targets local."""
    text, literals = _skeleton(tf(module).text["main.tf"])
    text = text[text.index("gpufan_targets = ") :]
    found = []
    for m in re.finditer(r'\bbackend\s*=\s*"(\d+)"', text):
        start = text.rindex("{", 0, m.start())
        body = text[start + 1 : _block_end(text, start + 1) - 1]
        keys = _keys(body)
        options = body[keys["options"] :].lstrip()[1:]
        options = options[: _block_end(options, 0) - 1]
        found.append((literals[int(m.group(1))], set(keys), set(_keys(options))))
    return found


OPTION_KEYS = {
    "batch": set(staging.REQUIRED_OPTIONS) | set(staging.OPTIONAL_OPTIONS),
    "cloudrun": set(cloudrun.OPTION_KEYS),
    "aca": set(aca.OPTION_KEYS),
    "aci": set(aci.OPTION_KEYS),
}


@pytest.mark.parametrize("module", CLOUDS)
def test_targets_have_target_fields_and_backend_options(tf: Any, module: str) -> None:
    targets = _exported_targets(tf, module)
    assert targets, f"{module} exports no target"
    for backend, attributes, options in targets:
        assert backend in OPTION_KEYS
        assert attributes <= set(Target.model_fields), attributes - set(Target.model_fields)
        assert {"name", "cloud", "region", "accelerator", "pricing"} <= attributes
        assert options <= OPTION_KEYS[backend], f"{module}: unknown {backend} options"
        if backend == "batch":
            assert set(staging.REQUIRED_OPTIONS) <= options
        if backend in ("aca", "aci"):
            assert {"subscription_id", "resource_group"} <= options


def test_target_accelerators_and_skus_are_known_to_the_core(tf: Any) -> None:
    accelerators = _csv_column(REPO / "core" / "data" / "accelerators.csv", "name")
    skus = _csv_column(REPO / "core" / "pricing" / "data" / "gpu_prices.csv", "sku")
    assert set(tf("gcp").locals["accelerators"].values()) <= accelerators
    assert set(tf("azure").locals["accelerators"].values()) <= accelerators
    assert set(tf("gcp").locals["skus"].values()) <= skus
    aws = tf("aws").text["variables.tf"]
    assert 'optional(string, "T4")' in aws and "T4" in accelerators
    assert 'optional(list(string), ["g4dn.xlarge"])' in aws and "g4dn.xlarge" in skus


@pytest.mark.parametrize("module", CLOUDS)
def test_every_checkov_skip_is_documented(tf: Any, module: str) -> None:
    skips = set(re.findall(r"#checkov:skip=([A-Z0-9_]+):\S", tf(module).all_text))
    readme = (TF_ROOT / module / "README.md").read_text()
    undocumented = {check for check in skips if check not in readme}
    assert not undocumented, f"{module}: skipped but not in README.md: {sorted(undocumented)}"


# ------------------------------------------------------------------- bundles <-> module platforms

_PLATFORM_VARIABLES = {  # bundle extra -> (module, variable, attribute, what the Platform holds)
    "aws": ("aws", "lambda", "runtime", "runtime"),
    "gcp": ("gcp", "functions", "runtime", "runtime"),
    "azure": ("azure", "function_app", "python_version", "python"),
}


def _optional_default(body: dict[str, Any], attribute: str) -> str:
    match = re.search(rf'\b{attribute}\s*=\s*optional\(string,\s*"([^"]+)"\)', str(body["type"]))
    assert match, f"{attribute} has no optional(string, default)"
    return match.group(1)


def _allowed(body: dict[str, Any], reference: str) -> set[str]:
    for v in body["validation"]:
        match = re.search(
            rf"contains\(\[([^\]]*)\],\s*{re.escape(reference)}\)", str(v["condition"])
        )
        if match:
            return set(re.findall(r'"([^"]+)"', match.group(1)))
    raise AssertionError(f"no contains([...], {reference}) validation")


@pytest.mark.parametrize("extra", sorted(_PLATFORM_VARIABLES))
def test_gpufan_package_builds_by_default_for_what_each_module_deploys(tf: Any, extra: str) -> None:
    module, variable, attribute, field = _PLATFORM_VARIABLES[extra]
    body = tf(module).variables[variable]
    assert _optional_default(body, attribute) == getattr(DEFAULT_PLATFORMS[extra], field)
    offered = {"aws": LAMBDA_RUNTIMES, "gcp": GCF_RUNTIMES, "azure": AZURE_PYTHON}[extra]
    assert _allowed(body, f"var.{variable}.{attribute}") == set(offered)


def test_lambda_architectures_are_the_ones_package_builds(tf: Any) -> None:
    body = tf("aws").variables["lambda"]
    assert _optional_default(body, "architecture") == DEFAULT_PLATFORMS["aws"].architecture
    assert _allowed(body, "var.lambda.architecture") == set(LAMBDA_ARCHITECTURES)


def test_the_aws_module_deploys_through_s3_and_checks_the_manifest(tf: Any) -> None:
    m = tf("aws")
    function = m.resource("aws_lambda_function", "this")
    assert "filename" not in function  # a bundle with its wheels is over the direct upload limit
    assert "aws_s3_object.lambda_zip" in _expr(function["s3_key"])
    assert "aws_s3_object.lambda_zip.version_id" in _expr(function["s3_object_version"])
    obj = m.resource("aws_s3_object", "lambda_zip")
    assert "aws_kms_key.this" in _expr(obj["kms_key_id"])
    assert '"${var.lambda_zip}.json"' in m.text["main.tf"]  # what gpufan package writes
    conditions = " ".join(
        _expr(p["condition"]) for p in _first(function["lifecycle"])["precondition"]
    )
    for field in ("platform.runtime", "platform.architecture", "dependencies"):
        assert f"local.lambda_bundle.{field}" in conditions


def test_workers_read_their_models_from_a_bucket_they_may_only_read(tf: Any) -> None:
    """Every worker gets --model-repo pointing at the module's models store, and its identity
    may list and read that store's objects (nothing more); the image is not where models live."""
    aws = tf("aws")
    assert aws.locals["models_url"].startswith('s3://${aws_s3_bucket.this["models"].id}/')
    job = aws.text["main.tf"]
    read = re.search(r'sid\s*=\s*"ReadModels".*?actions\s*=\s*\[([^\]]*)\]', job, re.S)
    listing = re.search(r'sid\s*=\s*"ListModels".*?actions\s*=\s*\[([^\]]*)\]', job, re.S)
    assert read and read.group(1).strip() == '"s3:GetObject"'
    assert listing and listing.group(1).strip() == '"s3:ListBucket"'

    for module, scheme, store in (
        ("gcp", "gs://", 'google_storage_bucket.this["models"]'),
        ("azure", "az://", "azurerm_storage_container.models"),
    ):
        m = tf(module)
        assert m.locals["models_url"].startswith(scheme), module
        assert store.split("[")[0].split(".")[0] in m.locals["models_url"], module
        known = {  # what Terraform interpolates, as the worker would receive it
            "${tostring(local.worker_port)}": str(m.locals["worker_port"]),
            "${tostring(var.repository_poll_secs)}": "60",
        }
        args = build_parser().parse_args([known.get(a, a) for a in m.locals["worker_args"]])
        assert args.model_repo == "${local.models_url}", module
        assert args.repository_poll_secs == 60
        assert "local.worker_args" in m.text["main.tf"], module

    gcp = tf("gcp").text["main.tf"]
    binding = re.search(r'"worker_models"\s*{(.*?)\n}', gcp, re.S)
    assert binding and '"roles/storage.objectViewer"' in binding.group(1)
    assert "google_service_account.worker.member" in binding.group(1)
    azure = tf("azure").text["main.tf"]
    role = re.search(r'azurerm_role_assignment"\s+"models"\s*{(.*?)\n}', azure, re.S)
    assert role and '"Storage Blob Data Reader"' in role.group(1)
    assert "azurerm_storage_container.models.id" in role.group(1)
    assert azure.count("AZURE_CLIENT_ID") >= 2  # the app and the container group use the identity
