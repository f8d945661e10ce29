//! Debouncing snapshot changes into pushes.
//!
//! The registry publishes every change, unmerged. Pushing each one would make every proxy
//! rebuild for every pod event; instead changes are merged until none has arrived for the
//! quiet period, or until the maximum delay since the first merged change has passed, and
//! only then is a new [`Generation`] built and published to every stream.

use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::model::Snapshot;

use super::cache::{EndpointTable, Generation};
use super::metrics::ConfigChanges;
use super::{DebounceOptions, Generator, Shared};

/// Builds the generation for `snapshot`: endpoints are translated and encoded here, once for
/// every proxy; outbound and inbound resources are filled in lazily by the streams.
pub fn build_generation(
    generator: &dyn Generator,
    snapshot: Arc<Snapshot>,
    version: u64,
    changed_at: Instant,
    previous: Option<&Generation>,
) -> Generation {
    // Only the services whose endpoint inputs changed are translated again, when the
    // generator can tell which those are.
    let changes = previous.and_then(|p| Some((p, generator.endpoint_changes(&p.snapshot, &snapshot)?)));
    let endpoints = match changes {
        Some((previous, hosts)) => {
            EndpointTable::update(&previous.endpoints, &hosts, generator.endpoints_of(&snapshot, &hosts))
        }
        None => EndpointTable::build(generator.endpoints(&snapshot), previous.map(|p| p.endpoints.as_ref())),
    };
    Generation::new(version, snapshot, changed_at, endpoints, previous)
}

/// Runs until the snapshot sender is dropped or the server is gone.
pub(crate) async fn debounce_loop(
    shared: Weak<Shared>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    options: DebounceOptions,
) {
    // The current value was used for the first generation (and marked seen then).
    loop {
        if snapshots.changed().await.is_err() {
            return;
        }
        let first_change = Instant::now();
        let mut last_change = first_change;
        let mut sender_gone = false;
        loop {
            let deadline = (last_change + options.quiet).min(first_change + options.max_delay);
            tokio::select! {
                changed = snapshots.changed() => match changed {
                    Ok(()) => last_change = Instant::now(),
                    Err(_) => { sender_gone = true; break; }
                },
                () = sleep_until(deadline.into()) => break,
            }
        }
        let snapshot = snapshots.borrow_and_update().clone();
        let Some(server) = shared.upgrade() else { return };
        let previous = server.generations.borrow().clone();
        let generator = server.generator.clone();
        let built = tokio::task::spawn_blocking(move || {
            let changes = ConfigChanges::between(&previous.snapshot, &snapshot);
            let generation =
                build_generation(generator.as_ref(), snapshot, previous.version + 1, first_change, Some(&previous));
            (generation, changes)
        })
        .await;
        match built {
            Ok((generation, changes)) => {
                tracing::debug!(version = generation.version, triggers = ?changes.triggers, "pushing");
                server.metrics.config_served(&generation.snapshot);
                server.metrics.config_pushed(&changes);
                server.generations.send_replace(Arc::new(generation));
            }
            Err(error) => tracing::error!(%error, "building a push failed; keeping the previous config"),
        }
        if sender_gone {
            return;
        }
    }
}
