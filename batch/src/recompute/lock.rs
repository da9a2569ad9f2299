//! The single-run lock: at most one recompute runs against a lake at a time, whichever process
//! starts it (`tributary serve`'s scheduler, `POST /v1/batch/run`, a cron `tributary batch run`).
//!
//! The lock is an object, `views/_lock`, created with a conditional put (`PutMode::Create`, an
//! atomic create-if-absent on local disks and on S3), holding who took it and until when. The holder
//! renews the lease while it runs; a holder that died (kill -9, lost machine) stops renewing, and
//! once its lease has expired the next run takes the lock over. The lease is long compared to the
//! renewal period, so a live holder is never taken over because of a slow renewal. A holder on the
//! same host whose process no longer exists (checked in `/proc`) is known dead, and its lock is
//! taken over at once rather than after the lease: a crashed cron run does not block the next one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tributary_schemas::blame::chain;
use tributary_schemas::lake::LOCK_PATH;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// `host:pid`, for the operator who wonders who holds it.
    pub owner: String,
    /// Unique per acquisition: a holder only renews or releases its own lock.
    pub token: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "a recompute is already running (lock held by {} since {}, lease until {})",
        .0.owner, .0.acquired_at.to_rfc3339(), .0.expires_at.to_rfc3339()
    )]
    Held(LockHolder),
    #[error("cannot access the run lock {LOCK_PATH}")]
    Store(#[from] object_store::Error),
}

/// A held lock; renewed in the background until [`RunLock::release`] (or drop, which stops renewing
/// and lets the lease expire).
#[derive(Debug)]
pub struct RunLock {
    store: Arc<dyn ObjectStore>,
    holder: LockHolder,
    renewer: JoinHandle<()>,
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

fn owner() -> String {
    format!("{}:{}", host(), std::process::id())
}

/// Whether `holder` is a process of this host that no longer exists.
fn holder_is_dead(holder: &LockHolder) -> bool {
    let Some((host, pid)) = holder.owner.rsplit_once(':') else {
        return false;
    };
    let proc_fs = std::path::Path::new("/proc/self").exists();
    proc_fs
        && host == self::host()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

fn token() -> String {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!(
        "{:032x}",
        xxhash_rust::xxh3::xxh3_128(format!("{}:{nanos}", owner()).as_bytes())
    )
}

fn body(holder: &LockHolder) -> PutPayload {
    PutPayload::from(serde_json::to_vec(holder).expect("a lock holder serializes"))
}

async fn read_holder(store: &dyn ObjectStore) -> Result<Option<LockHolder>, object_store::Error> {
    match store.get(&Path::from(LOCK_PATH)).await {
        Ok(found) => {
            let bytes = found.bytes().await?;
            // An unreadable lock (a crash mid-write cannot cause one: puts are atomic) is treated as
            // expired rather than blocking every future run.
            Ok(Some(serde_json::from_slice(&bytes).unwrap_or(LockHolder {
                owner: "unreadable lock".to_owned(),
                token: String::new(),
                acquired_at: DateTime::UNIX_EPOCH,
                expires_at: DateTime::UNIX_EPOCH,
            })))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

impl RunLock {
    /// Takes the lock for `lease`, renewed every `lease / 4` while held.
    pub async fn acquire(store: Arc<dyn ObjectStore>, lease: Duration) -> Result<Self, LockError> {
        let path = Path::from(LOCK_PATH);
        let lease_chrono = chrono::Duration::from_std(lease).expect("a lease fits chrono");
        for _ in 0..2 {
            let now = Utc::now();
            let holder = LockHolder {
                owner: owner(),
                token: token(),
                acquired_at: now,
                expires_at: now + lease_chrono,
            };
            let create = PutOptions::from(PutMode::Create);
            match store.put_opts(&path, body(&holder), create).await {
                Ok(_) => {
                    let renewer = tokio::spawn(renew(Arc::clone(&store), holder.clone(), lease));
                    return Ok(Self {
                        store,
                        holder,
                        renewer,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let Some(current) = read_holder(store.as_ref()).await? else {
                        continue; // released between our put and our read
                    };
                    let dead = holder_is_dead(&current);
                    if current.expires_at > Utc::now() && !dead {
                        return Err(LockError::Held(current));
                    }
                    tracing::warn!(
                        owner = current.owner,
                        expires_at = %current.expires_at,
                        holder_process_gone = dead,
                        "taking over the recompute lock of a run that died"
                    );
                    store.delete(&path).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        match read_holder(store.as_ref()).await? {
            Some(current) => Err(LockError::Held(current)),
            None => Err(LockError::Store(object_store::Error::Generic {
                store: "lock",
                source: "the run lock kept changing hands".into(),
            })),
        }
    }

    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }

    /// Stops renewing and deletes the lock if it is still ours.
    pub async fn release(self) -> Result<(), object_store::Error> {
        self.renewer.abort();
        if read_holder(self.store.as_ref())
            .await?
            .is_some_and(|h| h.token == self.holder.token)
        {
            self.store.delete(&Path::from(LOCK_PATH)).await?;
        }
        Ok(())
    }

    /// [`Self::release`], where a failure is only logged: it delays the next holder until the
    /// lease expires, no more.
    pub async fn release_or_let_expire(self) {
        if let Err(error) = self.release().await {
            tracing::warn!(error = %chain(&error), "cannot release the lake's run lock; it expires on its own");
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn renew(store: Arc<dyn ObjectStore>, mut holder: LockHolder, lease: Duration) {
    let lease_chrono = chrono::Duration::from_std(lease).expect("a lease fits chrono");
    loop {
        tokio::time::sleep(lease / 4).await;
        match read_holder(store.as_ref()).await {
            Ok(Some(current)) if current.token == holder.token => {}
            Ok(_) => {
                tracing::error!("the recompute lock was taken over while this run held it");
                return;
            }
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot check the recompute lock; will retry");
                continue;
            }
        }
        holder.expires_at = Utc::now() + lease_chrono;
        if let Err(error) = store.put(&Path::from(LOCK_PATH), body(&holder)).await {
            tracing::warn!(error = %chain(&error), "cannot renew the recompute lock; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn a_second_run_is_refused_until_the_first_releases() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let first = RunLock::acquire(Arc::clone(&store), Duration::from_secs(60))
            .await
            .unwrap();
        let refused = RunLock::acquire(Arc::clone(&store), Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("a recompute is already running (lock held by "),
            "{refused}"
        );
        first.release().await.unwrap();
        RunLock::acquire(store, Duration::from_secs(60))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_expired_lease_of_a_dead_holder_is_taken_over() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let dead = RunLock::acquire(Arc::clone(&store), Duration::from_millis(200))
            .await
            .unwrap();
        drop(dead); // stops renewing, as a killed process would
        assert!(matches!(
            RunLock::acquire(Arc::clone(&store), Duration::from_secs(60)).await,
            Err(LockError::Held(_))
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        RunLock::acquire(store, Duration::from_secs(60))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let now = Utc::now();
        let dead = LockHolder {
            owner: format!("{}:{dead_pid}", host()),
            token: "dead".to_owned(),
            acquired_at: now,
            expires_at: now + chrono::Duration::hours(1),
        };
        store
            .put(&Path::from(LOCK_PATH), body(&dead))
            .await
            .unwrap();
        let taken = RunLock::acquire(Arc::clone(&store), Duration::from_secs(60))
            .await
            .unwrap();
        assert_ne!(taken.holder().token, "dead");

        // A live process elsewhere (another host) keeps its lock until its lease ends.
        taken.release().await.unwrap();
        let remote = LockHolder {
            owner: format!("another-host:{dead_pid}"),
            ..dead
        };
        store
            .put(&Path::from(LOCK_PATH), body(&remote))
            .await
            .unwrap();
        assert!(matches!(
            RunLock::acquire(store, Duration::from_secs(60)).await,
            Err(LockError::Held(_))
        ));
    }

    #[tokio::test]
    async fn a_live_holder_keeps_its_lease_by_renewing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let _live = RunLock::acquire(Arc::clone(&store), Duration::from_millis(200))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            RunLock::acquire(store, Duration::from_secs(60)).await,
            Err(LockError::Held(_))
        ));
    }
}
