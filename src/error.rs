//! The request-path error: what went wrong, whose fault it was, and the JSON body of SPEC.md it becomes.

use std::fmt;

use http::StatusCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused a failure (pingora-error's split): it decides the status class and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal,
}

/// Every failure a request can meet, each with its SPEC.md code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    RequestTimeout,
    InvalidHandle,
    UnsupportedFormat,
    TooLarge,
    QuotaExceeded,
    InsufficientStorage,
    NotFound,
    MethodNotAllowed,
    BadSignature,
    Expired,
    TtlTooLong,
    Forbidden,
    SlotUsed,
    UpstreamUnreachable,
    UpstreamTimeout,
    BadUpstreamDirective,
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::InvalidHandle | Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::UnsupportedFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::TooLarge | Kind::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::BadSignature | Kind::Expired | Kind::TtlTooLong | Kind::Forbidden => {
                StatusCode::FORBIDDEN
            }
            Kind::SlotUsed => StatusCode::CONFLICT,
            Kind::UpstreamUnreachable | Kind::BadUpstreamDirective => StatusCode::BAD_GATEWAY,
            Kind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::RequestTimeout => "request_timeout",
            Kind::InvalidHandle => "invalid_handle",
            Kind::UnsupportedFormat => "unsupported_format",
            Kind::TooLarge => "too_large",
            Kind::QuotaExceeded => "quota_exceeded",
            Kind::InsufficientStorage => "insufficient_storage",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::BadSignature => "bad_signature",
            Kind::Expired => "expired",
            Kind::TtlTooLong => "ttl_too_long",
            Kind::Forbidden => "forbidden",
            Kind::SlotUsed => "slot_used",
            Kind::UpstreamUnreachable => "upstream_unreachable",
            Kind::UpstreamTimeout => "upstream_timeout",
            Kind::BadUpstreamDirective => "bad_upstream_directive",
            Kind::Internal => "internal_error",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            Kind::UpstreamUnreachable | Kind::UpstreamTimeout | Kind::BadUpstreamDirective => {
                Fault::Upstream
            }
            Kind::InsufficientStorage | Kind::Internal => Fault::Internal,
            _ => Fault::Client,
        }
    }
}

/// A failed request: its kind, a sentence for `verbose_error`, and the cause, kept for the log.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub detail: String,
    source: Option<BoxError>,
}

impl Error {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An internal failure (I/O, a broken invariant): the client sees a generic sentence, the log the cause.
    pub fn internal(context: &str, source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Internal, context).with_source(source)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn fault(&self) -> Fault {
        self.kind.fault()
    }

    /// The JSON body of SPEC.md; `upload_api` adds `"accepted": false` as the upload routes answer.
    pub fn body(&self, upload_api: bool) -> serde_json::Value {
        let verbose = match self.kind {
            Kind::Internal => "internal error; see the gateway's log".to_string(),
            _ => self.detail.clone(),
        };
        let mut body = serde_json::json!({ "error": self.kind.code(), "verbose_error": verbose });
        if upload_api {
            body["accepted"] = serde_json::Value::Bool(false);
        }
        body
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)?;
        let mut cause = self.source.as_deref().map(|e| e as &dyn std::error::Error);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_spec_fields() {
        let e = Error::new(Kind::UnsupportedFormat, "bytes are elf");
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let b = e.body(true);
        assert_eq!(b["accepted"], false);
        assert_eq!(b["error"], "unsupported_format");
        assert_eq!(b["verbose_error"], "bytes are elf");
        assert!(
            Error::new(Kind::UpstreamTimeout, "x")
                .body(false)
                .get("accepted")
                .is_none()
        );
    }

    #[test]
    fn internal_detail_stays_in_the_log() {
        let e = Error::internal("writing", std::io::Error::other("disk on fire"));
        assert!(e.to_string().contains("disk on fire"));
        assert!(!e.body(false).to_string().contains("disk on fire"));
        assert_eq!(e.fault(), Fault::Internal);
    }
}
