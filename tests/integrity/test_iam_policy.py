"""The least-privilege IAM policy in docs/iam-policy.json (shown by docs/aws.md) grants exactly what the code calls.

The actions are derived from the code, not listed from memory:

* SQS: every method call under ``include/``, ``plugins/`` and ``providers/`` (the streaming triggers) whose name is an operation of botocore's SQS model
  (``botocore.xform_name`` of ``get_service_model("sqs").operation_names``: ``receive_message``,
  ``change_message_visibility_batch``, ``purge_queue``, ...), sync or ``await``-ed, plus operation names passed as
  strings to ``get_paginator`` / ``get_waiter``. IAM authorises a batch call with the action of the single call
  (``DeleteMessageBatch`` -> ``sqs:DeleteMessage``), so the ``Batch`` suffix is folded away. A call on an object that
  is not an SQS client but has a method of the same name is counted too: a false alarm is a line in this file, a
  missed call is a run that fails with AccessDenied in production.
* S3: the storage calls the ETL makes on its paths (``ObjectStoragePath`` in Airflow), found by method name under
  ``include/data_delivery_etl/`` and mapped with ``STORAGE_ACTIONS`` below.

Then the policy document, docs/iam-policy.json, must grant every derived action and nothing else, on the right
queues; docs/aws.md, which explains it, must say how IAM authorises the batch calls.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from pathlib import Path

import botocore
import botocore.session
import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "docs" / "iam-policy.json"
AWS_PAGE = ROOT / "docs" / "aws.md"
# Where queue names are set: each SQS pipeline's settings.py.
SETTINGS = tuple(ROOT / "include" / pipeline / "settings.py" for pipeline in ("data_delivery_etl", "inference_execution"))
CODE_DIRS = (ROOT / "include", ROOT / "plugins", ROOT / "providers" / "event-streams" / "src")  # installed triggers
ETL_DIR = ROOT / "include" / "data_delivery_etl"

# Storage method of a path -> the S3 actions it needs when the path is s3:// (s3fs under ObjectStoragePath).
# HeadObject (exists, stat) is authorised by s3:GetObject; without s3:ListBucket a missing key answers 403, not 404.
STORAGE_ACTIONS: dict[str, frozenset[str]] = {
    "read_bytes": frozenset({"s3:GetObject"}),
    "read_text": frozenset({"s3:GetObject"}),
    "open": frozenset({"s3:GetObject"}),  # with a "w"/"a"/"x" mode: s3:PutObject (see storage_actions)
    "write_bytes": frozenset({"s3:PutObject"}),
    "write_text": frozenset({"s3:PutObject"}),
    "touch": frozenset({"s3:PutObject"}),
    "unlink": frozenset({"s3:DeleteObject"}),
    "rmdir": frozenset({"s3:DeleteObject", "s3:ListBucket"}),
    "exists": frozenset({"s3:ListBucket", "s3:GetObject"}),
    "stat": frozenset({"s3:ListBucket", "s3:GetObject"}),
    "is_file": frozenset({"s3:ListBucket", "s3:GetObject"}),
    "is_dir": frozenset({"s3:ListBucket"}),
    "mkdir": frozenset({"s3:ListBucket"}),  # S3 has no folders: s3fs only checks that the bucket exists
    "iterdir": frozenset({"s3:ListBucket"}),
    "glob": frozenset({"s3:ListBucket"}),
    "rglob": frozenset({"s3:ListBucket"}),
    "copy": frozenset({"s3:GetObject", "s3:PutObject"}),
    "rename": frozenset({"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}),
    "replace": frozenset({"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}),
    "move": frozenset({"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}),
}
_WRITE_MODE = re.compile(r"[wax+]")


# --------------------------------------------------------------------------------------------------- derivation


def sqs_operations() -> dict[str, str]:
    """boto3 method name -> SQS operation name, from botocore's service model (``purge_queue`` -> ``PurgeQueue``)."""
    model = botocore.session.get_session().get_service_model("sqs")
    return {botocore.xform_name(op): op for op in model.operation_names}


def iam_action(operation: str) -> str:
    """IAM action of an SQS operation: a batch call is authorised by the single call's action."""
    return f"sqs:{operation.removesuffix('Batch')}"


def sqs_calls(source: str, filename: str = "<snippet>") -> list[tuple[str, int, str]]:
    """``(where, line, operation)`` of every SQS operation the source calls."""
    ops = sqs_operations()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in ops:
            found.append((filename, node.lineno, ops[name]))
        elif name in ("get_paginator", "get_waiter", "can_paginate") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and arg.value in ops:
                found.append((filename, node.lineno, ops[arg.value]))
    return found


def storage_actions(source: str, filename: str = "<snippet>") -> dict[str, set[str]]:
    """S3 action -> ``file:line`` of the storage calls (``STORAGE_ACTIONS``) that need it."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        actions = STORAGE_ACTIONS.get(node.func.attr)
        if actions is None:
            continue
        if node.func.attr == "open":
            mode = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and _WRITE_MODE.search(mode.value):
                actions = frozenset({"s3:PutObject"})
        for action in actions:
            found.setdefault(action, set()).add(f"{filename}:{node.lineno}")
    return found


def _python_files(dirs: Iterable[Path]) -> list[Path]:
    return sorted(p for d in dirs if d.is_dir() for p in d.rglob("*.py"))


def code_sqs_actions() -> dict[str, set[str]]:
    """IAM action -> ``file:line`` of each SQS call under include/, plugins/ and providers/."""
    found: dict[str, set[str]] = {}
    for path in _python_files(CODE_DIRS):
        rel = str(path.relative_to(ROOT))
        for where, line, op in sqs_calls(path.read_text(), rel):
            found.setdefault(iam_action(op), set()).add(f"{where}:{line}")
    return found


def code_storage_actions() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in _python_files([ETL_DIR]):
        for action, wheres in storage_actions(path.read_text(), str(path.relative_to(ROOT))).items():
            found.setdefault(action, set()).update(wheres)
    return found


# --------------------------------------------------------------------------------------------------- the policy


def policy_document(text: str | None = None) -> dict:
    """docs/iam-policy.json: one IAM policy document (has ``Statement``)."""
    text = POLICY.read_text() if text is None else text
    doc = json.loads(text)
    assert isinstance(doc, dict) and "Statement" in doc, f"{POLICY.relative_to(ROOT)} is not an IAM policy document"
    return doc


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def grants(policy: dict) -> dict[str, set[str]]:
    """Allowed action -> resources (ARNs as written)."""
    out: dict[str, set[str]] = {}
    statements = policy["Statement"]
    for statement in [statements] if isinstance(statements, dict) else statements:
        if statement.get("Effect") != "Allow":
            continue
        for action in _as_list(statement["Action"]):
            out.setdefault(action, set()).update(_as_list(statement.get("Resource", [])))
    return out


def missing_grants(needed: Iterable[str], policy: dict) -> set[str]:
    granted = grants(policy)
    return {action for action in needed if action not in granted}


def queue_names(resources: Iterable[str]) -> set[str]:
    """Queue names of SQS ARNs (``arn:aws:sqs:<region>:<account>:<name>``)."""
    return {arn.rsplit(":", 1)[1] for arn in resources if arn.startswith("arn:aws:sqs:")}


def config_default(name: str) -> str:
    """Default of ``NAME: str = os.getenv("NAME", "<default>")`` in a settings.py (not this machine's environment)."""
    for node in (n for path in SETTINGS for n in ast.parse(path.read_text()).body):
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign):
            target = node.targets[0]
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name and isinstance(node.value, ast.Call):
            args = node.value.args
            if len(args) == 2 and isinstance(args[1], ast.Constant):
                return args[1].value
    raise AssertionError(f"{name} = os.getenv(..., <default>) not found in {[str(p) for p in SETTINGS]}")


# --------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def policy() -> dict:
    return policy_document()


def test_derivation_finds_sqs_calls_in_a_snippet(policy: dict) -> None:
    snippet = """
async def run(self, client):
    await client.change_message_visibility_batch(QueueUrl=q, Entries=[])
def settle(sqs):
    sqs.purge_queue(QueueUrl=q)
    sqs.get_paginator("list_queues")
    hook.get_conn().send_message_batch(QueueUrl=q, Entries=[])
    producer.produce("topic", b"x")  # not SQS
    sqs.purge  # not a call
"""
    ops = sorted(op for _, _, op in sqs_calls(snippet))
    assert ops == ["ChangeMessageVisibilityBatch", "ListQueues", "PurgeQueue", "SendMessageBatch"]
    actions = {iam_action(op) for op in ops}
    assert actions == {"sqs:ChangeMessageVisibility", "sqs:PurgeQueue", "sqs:ListQueues", "sqs:SendMessage"}
    # A purge_queue (or list_queues) added under include/ fails the policy check below.
    assert missing_grants(actions, policy) == {"sqs:PurgeQueue", "sqs:ListQueues"}


def test_derivation_of_storage_calls_in_a_snippet() -> None:
    snippet = """
def f(src, dst, root):
    if src.exists():
        dst.write_bytes(src.read_bytes())
        with root.open("wb") as out: pass
        with src.open() as f: pass
        src.unlink()
"""
    found = storage_actions(snippet)
    assert set(found) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert found["s3:PutObject"] == {"<snippet>:4", "<snippet>:5"}
    assert found["s3:GetObject"] == {"<snippet>:3", "<snippet>:4", "<snippet>:6"}


def test_the_code_calls_sqs() -> None:
    # Guard against a derivation that silently finds nothing (e.g. the client moved behind another name).
    actions = code_sqs_actions()
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:SendMessage"} <= set(actions)


def test_policy_grants_every_sqs_action_the_code_calls(policy: dict) -> None:
    actions = code_sqs_actions()
    missing = missing_grants(actions, policy)
    assert not missing, "docs/iam-policy.json lacks: " + "; ".join(
        f"{a} (called at {', '.join(sorted(actions[a]))})" for a in sorted(missing)
    )


def test_policy_grants_no_sqs_action_the_code_does_not_call(policy: dict) -> None:
    extra = {a for a in grants(policy) if a.startswith("sqs:")} - set(code_sqs_actions())
    assert not extra, f"docs/iam-policy.json grants SQS actions nothing in {[d.name for d in CODE_DIRS]} calls: {sorted(extra)}"


def test_sqs_actions_are_on_the_right_queues(policy: dict) -> None:
    granted = grants(policy)
    work = {config_default("DELIVERY_QUEUE"), config_default("INFERENCE_REQUEST_QUEUE")}
    senders = {config_default("DELIVERY_DLQ"), config_default("INFERENCE_REQUEST_DLQ"),
               config_default("INFERENCE_REPLY_QUEUE")}
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        assert queue_names(granted.get(action, ())) == work, action
    assert queue_names(granted.get("sqs:SendMessage", ())) == senders
    assert "*" not in {r for rs in granted.values() for r in rs}, "no wildcard resource"


def test_policy_grants_exactly_the_storage_actions_of_the_etl(policy: dict) -> None:
    needed = code_storage_actions()
    assert needed, f"no storage calls found under {ETL_DIR}: STORAGE_ACTIONS out of date?"
    granted = {a for a in grants(policy) if a.startswith("s3:")}
    missing = set(needed) - granted
    assert not missing, "docs/iam-policy.json lacks: " + "; ".join(
        f"{a} (needed at {', '.join(sorted(needed[a]))})" for a in sorted(missing)
    )
    extra = granted - set(needed)
    assert not extra, f"docs/iam-policy.json grants S3 actions the ETL does not need: {sorted(extra)}"


def test_s3_actions_are_on_the_right_prefixes(policy: dict) -> None:
    granted = grants(policy)
    objects = lambda action: {r for r in granted.get(action, ()) if r.startswith("arn:aws:s3:::")}  # noqa: E731
    assert objects("s3:GetObject") == {"arn:aws:s3:::<landing-bucket>/<landing-prefix>/*"}
    assert objects("s3:DeleteObject") == {"arn:aws:s3:::<landing-bucket>/<landing-prefix>/*"}  # quarantine moves it
    assert objects("s3:PutObject") == {"arn:aws:s3:::<quarantine-bucket>/<quarantine-prefix>/*"}
    buckets = objects("s3:ListBucket")
    assert buckets and all("/" not in r.removeprefix("arn:aws:s3:::") for r in buckets), "ListBucket is on buckets"


def test_the_aws_page_explains_the_batch_actions() -> None:
    text = AWS_PAGE.read_text()
    pairs = {"DeleteMessageBatch": "DeleteMessage", "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
             "SendMessageBatch": "SendMessage"}
    for batch, single in pairs.items():
        assert re.search(rf"`{batch}` (is authorised )?by `sqs:{single}`", text), batch
