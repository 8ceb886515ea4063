"""Worker: one cold start in a fresh interpreter; prints one JSON line.

python -m bench._cold_start_worker functions   # import azure.functions alone
python -m bench._cold_start_worker app         # import function_app, index, serve requests
"""

from __future__ import annotations

import time

_t0 = time.perf_counter()
import enum  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

HEAVY = (
    "azure.identity",
    "msal",
    "azure.storage.queue",
    "azure.storage.blob",
    "azure.data.tables",
    "azure.monitor.opentelemetry",
    "standardwebhooks",
    "cryptography.x509",
)
NETWORK_MODULES = ("azure.identity", "azure.storage", "azure.data.tables", "azure.core.pipeline")


def created_at_import() -> list[str]:
    """Live objects that would mean work at import: sessions, credentials, storage clients."""
    found = []
    for obj in gc.get_objects():
        cls = type(obj)
        module = getattr(cls, "__module__", "")
        if not isinstance(module, str):
            continue
        session = cls.__name__ == "Session" and module.startswith("requests")
        client = module.startswith(NETWORK_MODULES) and not isinstance(obj, type | enum.Enum)
        if session or client:
            found.append(f"{module}.{cls.__name__}")
    return sorted(set(found))


def main() -> int:
    mode = sys.argv[1]
    out: dict[str, object] = {"mode": mode}
    if mode == "functions":
        import azure.functions  # noqa: F401

        out["import_s"] = time.perf_counter() - _t0
        print(json.dumps(out))
        return 0
    import function_app

    out["import_s"] = time.perf_counter() - _t0
    import shared.runtime

    out["bridge_is_none_after_import"] = shared.runtime._bridge is None
    out["created_at_import"] = created_at_import()
    out["heavy_modules_at_import"] = [m for m in HEAVY if m in sys.modules]
    t = time.perf_counter()
    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    out["index_s"] = time.perf_counter() - t

    import azure.functions as func

    body = sys.stdin.read().encode()
    ingest = functions["ingest"].get_user_function()

    def request(payload: bytes) -> int:
        req = func.HttpRequest(
            method="POST",
            url="http://127.0.0.1/api/v1/compliance-script-results",
            headers={"Content-Type": "application/json", "Content-Length": str(len(payload))},
            params={},
            route_params={},
            body=payload,
        )
        return ingest(req).status_code

    t = time.perf_counter()
    out["first_status"] = request(body)
    out["first_request_s"] = time.perf_counter() - t
    out["cold_total_s"] = time.perf_counter() - _t0
    second = json.loads(body)
    second["deviceId"] = second["deviceId"][:-4] + "beef"
    t = time.perf_counter()
    out["second_status"] = request(json.dumps(second).encode())
    out["second_request_s"] = time.perf_counter() - t
    out["bridge_created_by_first_request"] = shared.runtime._bridge is not None
    out["heavy_modules_after_request"] = [m for m in HEAVY if m in sys.modules]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
