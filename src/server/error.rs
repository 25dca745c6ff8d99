//! The API's errors: an HTTP status, a stable machine-readable `code` and a message naming the
//! field or part at fault, answered as `{"error": {"code", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use smallcap_image::ImageError;

/// The error code of a failed response, left in its extensions for the metrics and the log.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503s).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// An image that could not be read: 415 when it is no image format we read, 413 when its
    /// header claims too many pixels (nothing is decoded then), else 400.
    pub fn image(e: &ImageError) -> Self {
        let (status, code) = match e {
            ImageError::UnknownFormat { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image")
            }
            ImageError::Unsupported { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image")
            }
            ImageError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
            ImageError::ExtremeAspect { .. } => (StatusCode::BAD_REQUEST, "invalid_image"),
            ImageError::ZeroSized { .. } | ImageError::Decode { .. } | ImageError::Io { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_image")
            }
        };
        Self::new(status, code, e.to_string())
    }

    /// A library error from preparing or captioning: bad input is the client's (400), anything
    /// else is ours (500).
    pub fn from_library(e: &crate::Error) -> Self {
        match e.root() {
            crate::Error::Input(m) => Self::bad_request("invalid_request", m.clone()),
            crate::Error::Image(ie) => Self::image(ie),
            other => Self::internal(other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}
