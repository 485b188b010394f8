//! CNI protocol types shared by the `netbox-cni` plugin: versions and the error object.
//! (The operations themselves arrive with the plugin issue; VERSION is answered now.)

use serde::Serialize;

/// Versions of the CNI spec this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
/// The version netbox answers in when the caller does not say.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Error codes from the CNI spec.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
}

/// The VERSION result.
#[derive(Debug, Serialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    pub fn new() -> Self {
        VersionResult {
            cni_version: CURRENT_VERSION.into(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

impl Default for VersionResult {
    fn default() -> Self {
        Self::new()
    }
}

/// The error object a plugin prints on stdout when it fails.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}
