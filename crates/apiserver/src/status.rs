//! Every failure leaves the API server as a `metav1.Status`, built here and only here,
//! with the code, reason and message upstream uses for the same case.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level validation failure (a `StatusCause`). `message` does not repeat the
/// field: clients print `field: message` themselves.
#[derive(Clone, Debug)]
pub(crate) struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        FieldError {
            message: format!("Invalid value: \"{value}\": {detail}"),
            field: field.into(),
            reason: "FieldValueInvalid",
        }
    }

    /// An invalid number (upstream prints numbers unquoted).
    pub fn invalid_number(field: impl Into<String>, value: i64, detail: &str) -> Self {
        FieldError {
            message: format!("Invalid value: {value}: {detail}"),
            field: field.into(),
            reason: "FieldValueInvalid",
        }
    }

    /// `field: message`, as the Status message lists it.
    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// What an error is about: the resource (plural), its group and the object's name.
pub(crate) struct Subject<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub name: &'a str,
}

impl Subject<'_> {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self) -> Value {
        json!({"name": self.name, "group": self.group, "kind": self.resource})
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(s: &Subject<'_>) -> Self {
        ApiError {
            details: Some(s.details()),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{}\" not found", s.qualified(), s.name),
            )
        }
    }

    pub fn already_exists(s: &Subject<'_>) -> Self {
        ApiError {
            details: Some(s.details()),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", s.qualified(), s.name),
            )
        }
    }

    pub fn conflict(s: &Subject<'_>) -> Self {
        ApiError {
            details: Some(s.details()),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    s.qualified(),
                    s.name
                ),
            )
        }
    }

    /// A conflict with its own explanation (`Operation cannot be fulfilled on KIND
    /// "name": why`).
    pub fn conflict_because(s: &Subject<'_>, why: &str) -> Self {
        ApiError {
            details: Some(s.details()),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": {why}",
                    s.qualified(),
                    s.name
                ),
            )
        }
    }

    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<FieldError>) -> Self {
        let summary: Vec<String> = causes.iter().map(FieldError::describe).collect();
        let message = if summary.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", summary[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", summary.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        ApiError {
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            ..Self::new(422, "Invalid", message)
        }
    }

    /// 401, as upstream words it (nothing about why).
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 415 for a body type the server does not read; `accepted` lists those it does.
    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 406 for a response type the server cannot produce.
    pub fn not_acceptable(produced: &[&str]) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                produced.join(", ")
            ),
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// Maps a datastore error on `subject` to the upstream response.
    pub fn from_store(e: skiff_storage::Error, s: &Subject<'_>) -> Self {
        use skiff_storage::Error as E;
        match e {
            E::NotFound { .. } => Self::not_found(s),
            E::AlreadyExists { .. } => Self::already_exists(s),
            E::Conflict { .. } => Self::conflict(s),
            E::Compacted {
                requested,
                compacted,
            } => Self::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            E::FutureRevision { .. } => Self::timeout("Too large resource version"),
            E::ValueTooLarge { .. } => Self::too_large(),
            other => {
                tracing::error!(error = %other, "datastore error");
                Self::internal(other)
            }
        }
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}
