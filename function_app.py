"""Every way data enters the bridge; the work itself lives in the `shared` package."""

import azure.functions as func

from shared import api

# Device authentication is the bridge's own (see BRIDGE_AUTH_MODE); function keys, when used, are
# checked by the platform before a request reaches these functions.
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


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
)
def ingest(req: func.HttpRequest) -> func.HttpResponse:
    return _http(api.ingest(req.method, dict(req.headers), req.get_body()))


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    return _http(api.health())
