//! The lab file and what it resolves to, one concern per file: `schema` (the file as written),
//! `names` (what things may be called), `units` (rates, durations, percentages), `pools`
//! (address drawing), `seed` (deterministic MACs and loss decisions), `plan` (the resolved
//! lab the builder and the runtime work from), `resolve` (validation and resolution).

pub mod names;
pub mod plan;
pub mod pools;
pub mod resolve;
pub mod schema;
pub mod seed;
pub mod units;

pub use names::{validate_name, MAX_NAME_LEN, MAX_SWITCH_NAME_LEN};
pub use plan::*;
pub use resolve::{describe_action, impair_change, partition_groups, resolve};
pub use schema::*;
pub use seed::static_mac;
pub use units::{parse_duration, parse_percent, parse_rate};

type Result<T, E = crate::lab::LabError> = std::result::Result<T, E>;

/// Pool the unaddressed links draw /24 subnets from when the file names none.
pub const DEFAULT_POOL: &str = "10.213.0.0/16";
