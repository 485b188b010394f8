//! Names in a lab file: what a lab, node or switch may be called, and why.

use super::Result;
use crate::lab::LabError;

/// Longest node or lab name: node namespaces are named LAB-NODE (netns names are at most
/// 64 bytes) and a switch's ports are named SWITCH.N (interface names are at most 15 bytes).
pub const MAX_NAME_LEN: usize = 24;
pub const MAX_SWITCH_NAME_LEN: usize = 10;

/// Checks a lab, node or switch name.
pub fn validate_name(what: &'static str, name: &str, max: usize) -> Result<()> {
    let bad = |reason: &'static str| {
        Err(LabError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > max {
        return bad("too long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("must start with a letter");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("only letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}
