//! `[dataplane] pin_path`: maps pinned under `<dir>/maps/<NAME>`, links under
//! `<dir>/links/<interface>-<hook>`, so that the fast path outlives the agent and the next
//! agent adopts it.

use std::path::{Path, PathBuf};

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use gateway_common::{LAYOUT_VERSION, names};

use super::{Dataplane, DataplaneError};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub(super) struct Pins {
    dir: PathBuf,
    /// The maps were already there (left by an earlier agent) and were adopted.
    adopted: bool,
}

/// Where one interface's link is pinned, and the link an earlier agent left there.
pub(super) struct LinkPin {
    pub path: PathBuf,
    pub previous: Option<FdLink>,
}

impl Pins {
    /// Checks `dir` (see [`prepare_pin_dir`]) and has `loader` pin every map there, or adopt
    /// the map pinned there already.
    pub fn prepare(dir: &Path, loader: &mut EbpfLoader<'_>) -> Result<Pins, DataplaneError> {
        let adopted = prepare_pin_dir(dir)?;
        for name in names::ALL_MAPS {
            loader.map_pin_path(name, dir.join("maps").join(name));
        }
        Ok(Pins {
            dir: dir.to_owned(),
            adopted,
        })
    }
}

impl Dataplane {
    /// Removes the maps' pins (a clean exit with pinning): the next agent starts afresh.
    pub fn unpin_maps(&mut self) -> std::io::Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        for name in names::ALL_MAPS {
            match std::fs::remove_file(pins.dir.join("maps").join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Whether the maps were adopted from an earlier agent's pins.
    pub fn adopted(&self) -> bool {
        self.pins.as_ref().is_some_and(|pins| pins.adopted)
    }

    /// Where the maps and links are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|pins| pins.dir.as_path())
    }

    /// With pinning: where `interface`'s `kind` link is pinned, and the link an earlier agent
    /// left there (unpinned now, to be replaced). A link of the `other` kind left there (the
    /// hook changed between runs) is detached.
    pub(super) fn link_pin(
        &self,
        interface: &str,
        kind: &str,
        other: &str,
    ) -> Result<Option<LinkPin>, DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(None);
        };
        let links = pins.dir.join("links");
        let pin_error = |message: String| DataplaneError::Pin {
            path: links.clone(),
            message,
        };
        let stale = links.join(format!("{interface}-{other}"));
        if stale.exists() {
            let old = PinnedLink::from_pin(&stale)
                .map_err(|err| pin_error(format!("cannot open {}: {err}", stale.display())))?;
            // Unpinned and dropped: detached.
            drop(old.unpin().map_err(|err| pin_error(err.to_string()))?);
        }
        let path = links.join(format!("{interface}-{kind}"));
        let previous = if path.exists() {
            let old = PinnedLink::from_pin(&path)
                .map_err(|err| pin_error(format!("cannot open {}: {err}", path.display())))?;
            Some(old.unpin().map_err(|err| pin_error(err.to_string()))?)
        } else {
            None
        };
        Ok(Some(LinkPin { path, previous }))
    }
}

/// Pins `link` at `path`: it outlives the agent.
pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<(), DataplaneError> {
    link.pin(path).map(drop).map_err(|err| DataplaneError::Pin {
        path: path.to_owned(),
        message: format!("cannot pin the link: {err}"),
    })
}

/// Checks `dir` is on a bpffs and, if maps are pinned there, that they have this agent's
/// layout. Returns whether there are maps to adopt.
fn prepare_pin_dir(dir: &Path) -> Result<bool, DataplaneError> {
    let pin_error = |message: String| DataplaneError::Pin {
        path: dir.to_owned(),
        message,
    };
    for sub in ["maps", "links"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|err| pin_error(format!("cannot create {sub}/: {err}")))?;
    }
    let stats =
        rustix::fs::statfs(dir).map_err(|err| pin_error(std::io::Error::from(err).to_string()))?;
    if stats.f_type as i64 != BPF_FS_MAGIC {
        return Err(pin_error(format!(
            "not on a bpffs (mount one: mount -t bpf bpf {})",
            dir.display()
        )));
    }
    let layout_pin = dir.join("maps").join(names::LAYOUT);
    if !layout_pin.exists() {
        return Ok(false);
    }
    let data = MapData::from_pin(&layout_pin)
        .map_err(|err| pin_error(format!("cannot open the pinned LAYOUT map: {err}")))?;
    let map = Map::from_map_data(data).map_err(|err| {
        pin_error(format!(
            "pinned LAYOUT is not a map this agent knows: {err}"
        ))
    })?;
    let found = Array::<_, u32>::try_from(map)
        .ok()
        .and_then(|array| array.get(&0, 0).ok());
    if found != Some(LAYOUT_VERSION) {
        return Err(DataplaneError::Layout {
            path: dir.to_owned(),
            found: found.map_or("unreadable".into(), |version| version.to_string()),
            expected: LAYOUT_VERSION,
        });
    }
    Ok(true)
}
