//! Tool pins: the approved version (definition hash) of each tool of each server, in the
//! control-plane store and cached in memory.
//!
//! Two tables (component `pins`, both backends through [`on_pool!`]):
//! - `tool_definitions`: every version of a tool definition the gateway has seen and acted on
//!   (canonical JSON, its poisoning findings, the event that recorded it: `pinned`, `changed`,
//!   `new`, `poisoned`), first and last seen. These are the alert records and what
//!   `portcullis catalog diff` compares.
//! - `tool_pins`: per (server, tool) the approved hash, who pinned it (`auto` for first-use
//!   pins) and when, and a store-wide `revision` that grows with every write, so replicas and a
//!   running gateway notice approvals made elsewhere (the CLI) with one cheap query.
//!
//! The data plane never waits on the store: [`Pins`] answers from memory; writes go through a
//! bounded queue to one writer task; a refresher re-reads the pins when the store's revision
//! moves. A pin made in memory and not yet written survives a refresh that does not know it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use portcullis_store::{Migration, Store, StoreError, on_pool, unix_now};
use sqlx::Row;
use tokio::sync::mpsc;

/// The store component name of these tables.
pub const COMPONENT: &str = "pins";

/// Schema steps (append-only).
pub const MIGRATIONS: &[Migration] = &[Migration {
    sqlite: "CREATE TABLE tool_definitions (
            server TEXT NOT NULL, tool TEXT NOT NULL, hash TEXT NOT NULL,
            definition TEXT NOT NULL, findings TEXT NOT NULL, event TEXT NOT NULL,
            first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
            PRIMARY KEY (server, tool, hash));
        CREATE TABLE tool_pins (
            server TEXT NOT NULL, tool TEXT NOT NULL, hash TEXT NOT NULL,
            pinned_by TEXT NOT NULL, pinned_at INTEGER NOT NULL, revision INTEGER NOT NULL,
            PRIMARY KEY (server, tool));",
    postgres: "CREATE TABLE tool_definitions (
            server TEXT NOT NULL, tool TEXT NOT NULL, hash TEXT NOT NULL,
            definition TEXT NOT NULL, findings TEXT NOT NULL, event TEXT NOT NULL,
            first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
            PRIMARY KEY (server, tool, hash));
        CREATE TABLE tool_pins (
            server TEXT NOT NULL, tool TEXT NOT NULL, hash TEXT NOT NULL,
            pinned_by TEXT NOT NULL, pinned_at BIGINT NOT NULL, revision BIGINT NOT NULL,
            PRIMARY KEY (server, tool));",
}];

/// Who made first-use and `auto_pin` pins.
pub const AUTO: &str = "auto";

/// Writes queued toward the store before new ones are dropped (logged; memory stays right).
const WRITE_QUEUE: usize = 1024;
/// How often the refresher looks for pins written elsewhere.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// One pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// SHA-256 (hex) of the approved definition's canonical JSON.
    pub hash: String,
    /// `auto` for first-use pins, else the approver.
    pub by: String,
    /// Unix seconds.
    pub at: i64,
}

/// One recorded definition version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionRow {
    pub server: String,
    pub tool: String,
    pub hash: String,
    /// Canonical JSON.
    pub definition: String,
    /// JSON array of the poisoning findings.
    pub findings: String,
    /// `pinned`, `changed`, `new` or `poisoned`.
    pub event: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A queued store write.
#[derive(Debug)]
pub enum Write {
    Definition(DefinitionRow),
    Pin {
        server: String,
        tool: String,
        pin: Pin,
        /// Keep an existing pin (first-use pins racing another replica) instead of replacing it.
        keep_existing: bool,
    },
}

type Key = (String, String);

/// The in-memory pins of every server.
#[derive(Debug, Default)]
pub struct Pins {
    map: RwLock<HashMap<Key, Pin>>,
    /// Pins per server (first-use needs "does this server have any?").
    counts: RwLock<HashMap<String, usize>>,
    /// Bumped on every change: list verdicts cached under an older generation are stale.
    generation: AtomicU64,
    /// Pins made here and not yet confirmed written.
    unwritten: Mutex<HashSet<Key>>,
    writer: OnceLock<mpsc::Sender<Write>>,
    /// The store's (max revision, row count) at the last load.
    seen_revision: Mutex<Option<(i64, i64)>>,
}

impl Pins {
    /// The pin of a tool.
    pub fn get(&self, server: &str, tool: &str) -> Option<Pin> {
        self.map
            .read()
            .expect("poisoned")
            .get(&(server.to_owned(), tool.to_owned()))
            .cloned()
    }

    /// Does `server` have any pin?
    pub fn server_has_pins(&self, server: &str) -> bool {
        self.counts
            .read()
            .expect("poisoned")
            .get(server)
            .is_some_and(|n| *n > 0)
    }

    /// Changes whenever any pin changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Pins in memory and queues the write (`keep_existing`: insert only if the store has none).
    pub fn pin(&self, server: &str, tool: &str, pin: Pin, keep_existing: bool) {
        let key = (server.to_owned(), tool.to_owned());
        self.set_local(key.clone(), pin.clone());
        self.unwritten.lock().expect("poisoned").insert(key);
        self.queue(Write::Pin {
            server: server.to_owned(),
            tool: tool.to_owned(),
            pin,
            keep_existing,
        });
    }

    /// Queues a definition record (an alert record or the definition behind a pin).
    pub fn record(&self, row: DefinitionRow) {
        self.queue(Write::Definition(row));
    }

    fn queue(&self, write: Write) {
        let Some(writer) = self.writer.get() else {
            return; // no store attached (unit tests): memory only
        };
        if let Err(error) = writer.try_send(write) {
            tracing::warn!(%error, "pin store write queue full or closed; write dropped (memory state kept)");
        }
    }

    fn set_local(&self, key: Key, pin: Pin) {
        let mut map = self.map.write().expect("poisoned");
        if map.get(&key) == Some(&pin) {
            return;
        }
        if map.insert(key.clone(), pin).is_none() {
            *self
                .counts
                .write()
                .expect("poisoned")
                .entry(key.0)
                .or_default() += 1;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Replaces the memory with the store's pins, keeping pins made here and not yet written.
    fn replace(&self, loaded: HashMap<Key, Pin>) {
        let unwritten = self.unwritten.lock().expect("poisoned").clone();
        let mut map = self.map.write().expect("poisoned");
        let mut next = loaded;
        for key in unwritten {
            if let Some(pin) = map.get(&key) {
                next.entry(key).or_insert_with(|| pin.clone());
            }
        }
        if *map == next {
            return;
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (server, _) in next.keys() {
            *counts.entry(server.clone()).or_default() += 1;
        }
        *map = next;
        *self.counts.write().expect("poisoned") = counts;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Loads every pin from `store` (after migrating) and starts the writer and the refresher;
    /// both end when `shutdown` is cancelled.
    pub async fn attach(
        self: &Arc<Self>,
        store: Store,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), StoreError> {
        migrate(&store).await?;
        self.refresh(&store).await?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        if self.writer.set(tx).is_err() {
            return Ok(()); // already attached
        }
        tokio::spawn(self.clone().write_loop(store.clone(), rx, shutdown.clone()));
        tokio::spawn(self.clone().refresh_loop(store, shutdown));
        Ok(())
    }

    /// Re-reads the pins if the store's revision moved. Returns whether it reloaded.
    pub async fn refresh(&self, store: &Store) -> Result<bool, StoreError> {
        let revision = revision(store).await?;
        if *self.seen_revision.lock().expect("poisoned") == Some(revision) {
            return Ok(false);
        }
        let loaded = load(store).await?;
        self.replace(loaded);
        *self.seen_revision.lock().expect("poisoned") = Some(revision);
        Ok(true)
    }

    async fn write_loop(
        self: Arc<Self>,
        store: Store,
        mut rx: mpsc::Receiver<Write>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let write = tokio::select! {
                write = rx.recv() => match write { Some(w) => w, None => return },
                _ = shutdown.cancelled() => return,
            };
            let key = match &write {
                Write::Pin { server, tool, .. } => Some((server.clone(), tool.clone())),
                Write::Definition(_) => None,
            };
            if let Err(error) = apply(&store, write).await {
                tracing::warn!(%error, "pin store write failed (memory state kept)");
            }
            if let Some(key) = key {
                self.unwritten.lock().expect("poisoned").remove(&key);
            }
        }
    }

    async fn refresh_loop(
        self: Arc<Self>,
        store: Store,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.refresh(&store).await {
                Ok(true) => tracing::debug!("pins reloaded from the store"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "pins could not be re-read; keeping the cached ones")
                }
            }
        }
    }
}

/// Applies the `pins` migrations.
pub async fn migrate(store: &Store) -> Result<(), StoreError> {
    store.migrate(COMPONENT, MIGRATIONS).await
}

async fn revision(store: &Store) -> Result<(i64, i64), StoreError> {
    let revision = on_pool!(store.backend(), pool => {
        let row = sqlx::query("SELECT COALESCE(MAX(revision), 0) AS r, COUNT(*) AS n FROM tool_pins")
            .fetch_one(pool)
            .await?;
        (row.try_get::<i64, _>("r")?, row.try_get::<i64, _>("n")?)
    });
    Ok(revision)
}

async fn load(store: &Store) -> Result<HashMap<Key, Pin>, StoreError> {
    let rows = on_pool!(store.backend(), pool => {
        sqlx::query("SELECT server, tool, hash, pinned_by, pinned_at FROM tool_pins")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| -> Result<(Key, Pin), sqlx::Error> {
                Ok((
                    (row.try_get("server")?, row.try_get("tool")?),
                    Pin {
                        hash: row.try_get("hash")?,
                        by: row.try_get("pinned_by")?,
                        at: row.try_get("pinned_at")?,
                    },
                ))
            })
            .collect::<Result<HashMap<_, _>, _>>()?
    });
    Ok(rows)
}

/// Performs one write.
pub async fn apply(store: &Store, write: Write) -> Result<(), StoreError> {
    match write {
        Write::Definition(row) => {
            on_pool!(store.backend(), pool => {
                sqlx::query(
                    "INSERT INTO tool_definitions (server, tool, hash, definition, findings, event, first_seen, last_seen)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (server, tool, hash) DO UPDATE SET last_seen = excluded.last_seen, event = excluded.event",
                )
                .bind(&row.server)
                .bind(&row.tool)
                .bind(&row.hash)
                .bind(&row.definition)
                .bind(&row.findings)
                .bind(&row.event)
                .bind(row.first_seen)
                .bind(row.last_seen)
                .execute(pool)
                .await?;
            });
        }
        Write::Pin {
            server,
            tool,
            pin,
            keep_existing,
        } => {
            let conflict = if keep_existing {
                "DO NOTHING"
            } else {
                "DO UPDATE SET hash = excluded.hash, pinned_by = excluded.pinned_by, \
                 pinned_at = excluded.pinned_at, revision = excluded.revision"
            };
            let sql = format!(
                "INSERT INTO tool_pins (server, tool, hash, pinned_by, pinned_at, revision)
                 VALUES ($1, $2, $3, $4, $5, (SELECT COALESCE(MAX(revision), 0) + 1 FROM tool_pins))
                 ON CONFLICT (server, tool) {conflict}"
            );
            on_pool!(store.backend(), pool => {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&server)
                    .bind(&tool)
                    .bind(&pin.hash)
                    .bind(&pin.by)
                    .bind(pin.at)
                    .execute(pool)
                    .await?;
            });
        }
    }
    Ok(())
}

/// Every pin, by (server, tool) (the CLI's view).
pub async fn all_pins(store: &Store) -> Result<HashMap<Key, Pin>, StoreError> {
    load(store).await
}

/// Every recorded definition version, oldest first.
pub async fn definitions(store: &Store) -> Result<Vec<DefinitionRow>, StoreError> {
    let rows = on_pool!(store.backend(), pool => {
        sqlx::query(
            "SELECT server, tool, hash, definition, findings, event, first_seen, last_seen
             FROM tool_definitions ORDER BY server, tool, first_seen, hash",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| -> Result<DefinitionRow, sqlx::Error> {
            Ok(DefinitionRow {
                server: row.try_get("server")?,
                tool: row.try_get("tool")?,
                hash: row.try_get("hash")?,
                definition: row.try_get("definition")?,
                findings: row.try_get("findings")?,
                event: row.try_get("event")?,
                first_seen: row.try_get("first_seen")?,
                last_seen: row.try_get("last_seen")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?
    });
    Ok(rows)
}

/// Pins `hash` for (server, tool) now, by `by` (replacing any pin).
pub async fn approve(
    store: &Store,
    server: &str,
    tool: &str,
    hash: &str,
    by: &str,
) -> Result<(), StoreError> {
    apply(
        store,
        Write::Pin {
            server: server.to_owned(),
            tool: tool.to_owned(),
            pin: Pin {
                hash: hash.to_owned(),
                by: by.to_owned(),
                at: unix_now(),
            },
            keep_existing: false,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: &str, tool: &str, hash: &str, event: &str, seen: i64) -> DefinitionRow {
        DefinitionRow {
            server: server.into(),
            tool: tool.into(),
            hash: hash.into(),
            definition: format!("{{\"name\":\"{tool}\"}}"),
            findings: "[]".into(),
            event: event.into(),
            first_seen: seen,
            last_seen: seen,
        }
    }

    async fn exercise(store: Store) {
        migrate(&store).await.unwrap();
        migrate(&store).await.unwrap();
        let pins = Pins::default();
        assert!(pins.refresh(&store).await.unwrap(), "first load");
        assert!(!pins.server_has_pins("fx"));
        let generation = pins.generation();

        // A first-use pin, then a competing one that must not replace it.
        for (hash, keep) in [("aaa", true), ("bbb", true)] {
            apply(
                &store,
                Write::Pin {
                    server: "fx".into(),
                    tool: "t".into(),
                    pin: Pin {
                        hash: hash.into(),
                        by: AUTO.into(),
                        at: 1,
                    },
                    keep_existing: keep,
                },
            )
            .await
            .unwrap();
        }
        apply(
            &store,
            Write::Definition(row("fx", "t", "aaa", "pinned", 1)),
        )
        .await
        .unwrap();
        apply(
            &store,
            Write::Definition(row("fx", "t", "ccc", "changed", 5)),
        )
        .await
        .unwrap();
        // Seen again: last_seen and the latest event move, first_seen stays.
        apply(
            &store,
            Write::Definition(row("fx", "t", "ccc", "changed", 9)),
        )
        .await
        .unwrap();

        assert!(pins.refresh(&store).await.unwrap());
        assert_eq!(pins.get("fx", "t").unwrap().hash, "aaa");
        assert!(pins.server_has_pins("fx"));
        assert!(pins.generation() > generation);
        assert!(!pins.refresh(&store).await.unwrap(), "nothing moved");

        // An approval elsewhere (the CLI) replaces the pin and is noticed.
        approve(&store, "fx", "t", "ccc", "cli:alice")
            .await
            .unwrap();
        assert!(pins.refresh(&store).await.unwrap());
        let pin = pins.get("fx", "t").unwrap();
        assert_eq!((pin.hash.as_str(), pin.by.as_str()), ("ccc", "cli:alice"));

        let defs = definitions(&store).await.unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(
            (defs[1].hash.as_str(), defs[1].first_seen, defs[1].last_seen),
            ("ccc", 5, 9)
        );
    }

    #[tokio::test]
    async fn pins_round_trip_on_sqlite() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("portcullis-pins-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        exercise(portcullis_store::testing::sqlite(&dir).await).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn pins_round_trip_on_postgres() {
        exercise(portcullis_store::testing::postgres("pins_test").await).await;
    }

    #[test]
    fn unwritten_local_pins_survive_a_reload() {
        let pins = Pins::default();
        pins.pin(
            "fx",
            "t",
            Pin {
                hash: "h".into(),
                by: AUTO.into(),
                at: 0,
            },
            true,
        );
        pins.replace(HashMap::new());
        assert_eq!(pins.get("fx", "t").unwrap().hash, "h");
        assert!(pins.server_has_pins("fx"));
    }
}
