//! Response builders and the bounded JSON body reader the handlers share.

// Early answers are `Err(Response)`, as in the handlers.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;

/// Largest request body, and the time to send it.
pub(super) const MAX_BODY: usize = 64 * 1024;
pub(super) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body: String = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .expect("a static response builds")
}

pub(super) fn json(code: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("API values serialize");
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a static response builds")
}

/// Reads a JSON object body (empty: `{}`), bounded in size and time.
pub(super) async fn read_json(
    req: Request<Body>,
) -> Result<serde_json::Map<String, serde_json::Value>, Response<Body>> {
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > MAX_BODY
    {
        return Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {MAX_BODY} bytes")));
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => return Err(text(StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
        Ok(Err(e)) => {
            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the request body: {e}")));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(text(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(text(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}"))),
    }
}
