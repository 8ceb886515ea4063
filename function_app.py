"""Every way data enters the bridge; the work itself lives in the `shared` package."""

import azure.functions as func

from shared import api, runtime
from shared.settings import QUEUES, Settings

# Function keys are the platform's check, applied only to FUNCTION-level triggers; the settings
# object decides whether ingest needs one (it fails closed). Reading it creates nothing.
INGEST_AUTH = (
    func.AuthLevel.FUNCTION if Settings.ingest_needs_function_key() else func.AuthLevel.ANONYMOUS
)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _http(response: api.ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        body=response.body_bytes(),
        status_code=response.status,
        headers=response.headers,
        mimetype=response.content_type,
    )


# All methods are routed here so a wrong one gets a 405 problem instead of the host's bare 404.
@app.route(
    route="v1/compliance-script-results",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    auth_level=INGEST_AUTH,
)
def ingest(req: func.HttpRequest) -> func.HttpResponse:
    return _http(api.ingest(req.method, dict(req.headers), req.get_body(), query=req.params))


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _http(api.health())


# One queue per destination, so one destination's outage never delays another's writes.
@app.queue_trigger(arg_name="msg", queue_name=QUEUES["graph"], connection="AzureWebJobsStorage")
def deliver_graph(msg: func.QueueMessage) -> None:
    runtime.on_queue_message("graph", msg.get_body().decode("utf-8"), msg.dequeue_count)


@app.queue_trigger(arg_name="msg", queue_name=QUEUES["logs"], connection="AzureWebJobsStorage")
def deliver_logs(msg: func.QueueMessage) -> None:
    runtime.on_queue_message("logs", msg.get_body().decode("utf-8"), msg.dequeue_count)


@app.queue_trigger(arg_name="msg", queue_name=QUEUES["entra"], connection="AzureWebJobsStorage")
def deliver_entra(msg: func.QueueMessage) -> None:
    runtime.on_queue_message("entra", msg.get_body().decode("utf-8"), msg.dequeue_count)
