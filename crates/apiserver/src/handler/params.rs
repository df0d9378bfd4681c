//! What a request carries besides its path: bodies (JSON, YAML, protobuf; size-limited),
//! list, delete and patch options, and who a write is recorded for.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::registry::Resource;
use crate::registry::delete::{DeleteOptions, Propagation};
use crate::registry::selector::{FieldSelector, LabelSelector};
use crate::registry::store::{ListOptions, PatchType};
use crate::status::{ApiError, FieldError};

/// Upstream's request body limit.
pub(super) const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// `DeleteOptions` from the body (optional) and the query (`gracePeriodSeconds`).
pub(super) fn delete_options(
    query: &HashMap<String, String>,
    body: bytes::Bytes,
    protobuf: bool,
) -> Result<DeleteOptions, ApiError> {
    let options: Value = if body.is_empty() {
        json!({})
    } else if protobuf {
        crate::proto::to_json(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let precondition = |field: &str| {
        options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let grace =
        match query.get("gracePeriodSeconds") {
            Some(g) => Some(g.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds: \"{g}\""))
            })?),
            None => options["gracePeriodSeconds"].as_i64(),
        };
    let policy = query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| options["propagationPolicy"].as_str().map(str::to_string));
    let orphan = match query.get("orphanDependents") {
        Some(o) => Some(o == "true"),
        None => options["orphanDependents"].as_bool(),
    };
    let invalid = |field: &str, reason: &'static str, message: String| {
        ApiError::invalid(
            "DeleteOptions",
            "meta.k8s.io",
            "",
            vec![FieldError {
                field: field.into(),
                reason,
                message,
            }],
        )
    };
    let propagation = match (policy, orphan) {
        (Some(_), Some(o)) => {
            return Err(invalid(
                "orphanDependents",
                "FieldValueInvalid",
                format!("Invalid value: {o}: orphanDependents and deletionPropagation cannot be both set"),
            ));
        }
        (Some(p), None) => Some(Propagation::parse(&p).ok_or_else(|| {
            invalid(
                "propagationPolicy",
                "FieldValueNotSupported",
                format!("Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
            )
        })?),
        (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Background),
        (None, None) => None,
    };
    Ok(DeleteOptions {
        resource_version: precondition("resourceVersion"),
        uid: precondition("uid"),
        propagation,
        grace_period_seconds: grace,
        dry_run: options["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All")),
    })
}

pub(super) const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Who a write is recorded for: `fieldManager`, else the User-Agent's product
/// (`kubectl/v1.33.1 (linux/amd64)` → `kubectl`), as upstream.
pub(super) fn field_manager(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<str>, ApiError> {
    if let Some(manager) = query.get("fieldManager") {
        if manager.len() > 128 || manager.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![FieldError::invalid(
                    "fieldManager",
                    manager,
                    "must be at most 128 printable characters",
                )],
            ));
        }
        return Ok(manager.as_str().into());
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let product: String = agent
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    Ok(if product.is_empty() {
        "unknown".into()
    } else {
        product.into()
    })
}

pub(super) fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    match content_type(headers).as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
        other => Err(ApiError::unsupported_media_type(
            other,
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                APPLY_PATCH,
            ],
        )),
    }
}

pub(super) fn list_options(
    r: &Resource,
    query: &HashMap<String, String>,
) -> Result<ListOptions, ApiError> {
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: \"{l}\"")))?,
        ),
        None => None,
    };
    Ok(ListOptions {
        label_selector: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
        field_selector: FieldSelector::parse(
            r,
            query.get("fieldSelector").map_or("", String::as_str),
        )
        .map_err(ApiError::bad_request)?,
        limit,
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: query.get("resourceVersion").cloned(),
        resource_version_match: query.get("resourceVersionMatch").cloned(),
    })
}

/// Upstream's combinations of resourceVersion, resourceVersionMatch and continue that a
/// LIST refuses.
pub(super) fn check_list_versions(opts: &ListOptions) -> Result<(), ApiError> {
    let rv = opts.resource_version.as_deref().unwrap_or("");
    let matching = opts.resource_version_match.as_deref().unwrap_or("");
    let invalid = |field: &str, message: String| {
        ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![FieldError {
                field: field.into(),
                reason: "FieldValueForbidden",
                message,
            }],
        )
    };
    if !matching.is_empty() && rv.is_empty() {
        return Err(invalid(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                .into(),
        ));
    }
    if matching == "Exact" && rv == "0" {
        return Err(invalid(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
                .into(),
        ));
    }
    if opts.continue_token.is_some() && !rv.is_empty() && rv != "0" {
        return Err(invalid(
            "resourceVersion",
            "Forbidden: specifying resource version is not allowed when using continue".into(),
        ));
    }
    Ok(())
}

pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads a body of at most `MAX_BODY_BYTES`. A larger one is still read (and dropped) up
/// to `DRAIN_BYTES`, so the client receives the 413 as a complete exchange instead of a
/// reset stream; beyond that the request is cut off.
pub(super) async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    const DRAIN_BYTES: usize = 16 << 20;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        total += chunk.len();
        if total > DRAIN_BYTES {
            return Err(ApiError::too_large());
        }
        if total <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(ApiError::too_large());
    }
    Ok(buf.freeze())
}

/// A request body as JSON; YAML bodies (`application/yaml`) are read too, as upstream.
pub(crate) async fn json_body(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let content_type = content_type(headers);
    let yaml = matches!(
        content_type.as_str(),
        "application/yaml" | "application/x-yaml" | "text/yaml"
    );
    if crate::proto::is_protobuf(&content_type) {
        let bytes = read_body(body).await?;
        return crate::proto::to_json(&bytes).map_err(|e| {
            ApiError::bad_request(format!("error decoding the protobuf request body: {e}"))
        });
    }
    if !(yaml
        || content_type.is_empty()
        || content_type == "application/json"
        || content_type == "*/*")
    {
        return Err(ApiError::unsupported_media_type(
            &content_type,
            &[
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf",
            ],
        ));
    }
    let bytes = read_body(body).await?;
    if yaml {
        return yaml_or_json(&bytes);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))
}

/// A YAML body (JSON is YAML too).
pub(super) fn yaml_or_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}")))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding the YAML request body: {e}")))
}
