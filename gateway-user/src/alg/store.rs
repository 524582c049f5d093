//! The ALG's control sessions on disk, for the agent that adopts a pinned fast path after this
//! one: a snapshot (`[ftp] state_file`) and a journal beside it (`<state_file>.journal`) of
//! what changed since, one JSON line per save.
//!
//! A save after each batch of punted packets must happen before the batch's packets leave (a
//! restarted agent must never hold sequence edits older than what the peers saw), so it has to
//! cost what the batch changed, not the whole table: it appends the changed connections to the
//! journal. When the journal outgrows the snapshot, a new snapshot is written (to a temporary
//! file renamed over the old one) under the next *generation*, and the journal starts over;
//! journal lines carry their generation, so lines older than the snapshot (a crash between the
//! rename and the truncation) are never replayed over it. A line cut short by a crash ends the
//! replay: everything before it was complete.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use super::control::{ChangeLog, ControlTable, SavedChanges, SavedTable};

/// The journal is compacted into a new snapshot once it is larger than this and than twice
/// the last snapshot.
const COMPACT_AFTER_BYTES: u64 = 1 << 20;

pub struct StateStore {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    journal_bytes: u64,
    snapshot_bytes: u64,
    generation: u64,
}

impl StateStore {
    /// Starts a store at `snapshot` holding `table` as it is now (a fresh snapshot, an empty
    /// journal).
    pub fn create(snapshot: &Path, table: &mut ControlTable) -> io::Result<StateStore> {
        table.track_changes(ChangeLog::Store);
        let journal_path = journal_path(snapshot);
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)?;
        let mut store = StateStore {
            snapshot: snapshot.to_owned(),
            journal_path,
            journal,
            journal_bytes: 0,
            snapshot_bytes: 0,
            generation: 0,
        };
        store.compact(table)?;
        Ok(store)
    }

    /// Appends what changed in `table` since the last save, compacting when the journal has
    /// grown past the snapshot. Returns the bytes written.
    pub fn save_changes(&mut self, table: &mut ControlTable) -> io::Result<u64> {
        let Some(changes) = table.take_changes(ChangeLog::Store, self.generation) else {
            return Ok(0);
        };
        let mut line = serde_json::to_vec(&changes).map_err(io::Error::other)?;
        line.push(b'\n');
        self.journal.write_all(&line)?;
        self.journal_bytes += line.len() as u64;
        if self.journal_bytes > COMPACT_AFTER_BYTES.max(2 * self.snapshot_bytes) {
            return self.compact(table);
        }
        Ok(line.len() as u64)
    }

    /// Writes the whole table as the snapshot of a new generation, then empties the journal.
    pub fn compact(&mut self, table: &mut ControlTable) -> io::Result<u64> {
        let generation = self.generation + 1;
        let bytes = serde_json::to_vec(&table.save(generation)).map_err(io::Error::other)?;
        let temporary = self.snapshot.with_extension("tmp");
        std::fs::write(&temporary, &bytes)?;
        std::fs::rename(&temporary, &self.snapshot)?;
        // From here the snapshot is the newer: lines of the old generation are ignored even if
        // the truncation below never happens.
        self.generation = generation;
        File::create(&self.journal_path)?;
        self.journal = OpenOptions::new().append(true).open(&self.journal_path)?;
        self.journal_bytes = 0;
        self.snapshot_bytes = bytes.len() as u64;
        Ok(self.snapshot_bytes)
    }

    /// Removes the snapshot and its journal (the next agent starts afresh).
    pub fn remove(snapshot: &Path) {
        let _ = std::fs::remove_file(snapshot);
        let _ = std::fs::remove_file(journal_path(snapshot));
    }
}

/// The saved table at `snapshot` with its journal replayed: `Ok(None)` when there is none,
/// an error when the snapshot cannot be read or parsed.
pub fn load(snapshot: &Path) -> io::Result<Option<SavedTable>> {
    let bytes = match std::fs::read(snapshot) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut table: SavedTable = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    let journal = match File::open(journal_path(snapshot)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Some(table)),
        Err(err) => return Err(err),
    };
    for (number, line) in BufReader::new(journal).split(b'\n').enumerate() {
        let changes = match serde_json::from_slice::<SavedChanges>(&line?) {
            Ok(changes) => changes,
            Err(err) => {
                // Cut short by a crash while it was written: the end of what was saved.
                tracing::warn!(
                    journal = %journal_path(snapshot).display(),
                    line = number + 1,
                    "ftp state journal line unreadable, the replay ends before it: {err}"
                );
                break;
            }
        };
        if changes.generation == table.generation {
            table.apply(changes);
        }
    }
    Ok(Some(table))
}

fn journal_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}
