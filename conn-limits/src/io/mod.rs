//! Tokio shells around the sans-IO [`crate::core`] types.

pub mod gate;
