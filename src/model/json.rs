//! Optional fields of JSON configurations, read the way every netbox reader reads them: absent
//! and `null` are the same, and a value of another type is an error the caller words (each
//! reader has its own error type and message form).

use serde_json::Value;

/// A field holding a value of the wrong type; carries what it holds, for messages.
#[derive(Debug, Clone, Copy)]
pub struct WrongType<'a>(pub &'a Value);

/// A string field.
pub fn opt_str(v: Option<&Value>) -> Result<Option<&str>, WrongType<'_>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(WrongType(other)),
    }
}

/// A field that is absent (or null) or anything else.
pub fn opt_value(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}
