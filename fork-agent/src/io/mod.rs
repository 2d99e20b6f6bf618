//! IO shells: kernel (aya, AF_XDP) and network (tokio) around the cores.
pub mod agent;
pub mod bot;
pub mod check_kernel;
pub mod control;
pub mod ebpf;
pub mod fallback;
pub mod fork_store;
pub mod metrics;
pub mod netdev;
pub mod speech;
pub mod statuses;
pub mod xsk;

/// Sleeps until a core's next deadline (`poll_timeout`); `None` never wakes.
pub async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
