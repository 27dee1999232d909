//! Where the dispatchable drivers are: an `rstar` R-tree whose leaves are *pages*, one per
//! cell of a latitude/longitude grid (about 220 m a side in Korea), each holding its
//! drivers' rows inline — as a disk R-tree's leaf pages hold many entries, not one.
//!
//! A driver moving inside its cell is a write to its row; crossing into the next cell is
//! a swap-remove from one page and a push onto another — the tree changes only when a
//! cell gets its first driver ever (empty pages stay until [`Pages::sweep_empty`]). A
//! query asks the tree for the pages meeting a latitude/longitude box around the pickup
//! and reads their rows, a few contiguous cache lines per page.

use rstar::{AABB, RStarInsertionStrategy, RTree, RTreeObject, RTreeParams};
use tokio::time::Instant;

use crate::geometry::{EARTH_RADIUS_M, LatLng};

/// A cell's side in degrees of latitude (≈ 222 m).
const CELL_LAT_DEG: f64 = 0.002;
/// A cell's side in metres, north to south.
pub const CELL_SIDE_M: f64 = CELL_LAT_DEG * EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
/// A cell's side in degrees of longitude (≈ 220 m at Seoul's latitude, 278 m at the
/// equator).
const CELL_LNG_DEG: f64 = 0.0025;

/// What a query reads of a driver: 48 bytes, inline in its page.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub unit: [f64; 3],
    pub last_ping: Instant,
    /// The driver's slot in the index.
    pub slot: u32,
    /// Has a live socket (the page holds only drivers who said `available`, have a
    /// position and no trip): dispatchable unless its last ping is stale.
    pub ready: bool,
}

/// Which page, and which row in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    page: u32,
    row: u32,
}

type Key = (i32, i32);

struct Page {
    key: Key,
    rows: Vec<Row>,
    /// In the tree and the key map (not on the free list).
    open: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct PageEntry {
    envelope: AABB<[f64; 2]>,
    page: u32,
}

impl RTreeObject for PageEntry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// Wide nodes: the tree changes only when a page opens or closes, so its insertion cost
/// hardly matters, and a query visits fewer, fuller nodes (4 levels at 50,000 pages).
struct PageParams;

impl RTreeParams for PageParams {
    const MIN_SIZE: usize = 6;
    const MAX_SIZE: usize = 16;
    const REINSERTION_COUNT: usize = 4;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

#[derive(Default)]
pub(super) struct Pages {
    tree: RTree<PageEntry, PageParams>,
    pages: Vec<Page>,
    by_key: std::collections::HashMap<Key, u32, foldhash::fast::RandomState>,
    free: Vec<u32>,
}

fn key_of(position: LatLng) -> Key {
    (
        (position.lat() / CELL_LAT_DEG).floor() as i32,
        (position.lng() / CELL_LNG_DEG).floor() as i32,
    )
}

fn cell(key: Key) -> AABB<[f64; 2]> {
    let (lat, lng) = (
        f64::from(key.0) * CELL_LAT_DEG,
        f64::from(key.1) * CELL_LNG_DEG,
    );
    AABB::from_corners([lat, lng], [lat + CELL_LAT_DEG, lng + CELL_LNG_DEG])
}

impl Pages {
    /// Updates the row at `place` if `position` is still in its cell; otherwise moves the
    /// row to the right page. Returns its place, and the slot of a row that the move
    /// shifted (its place is now the old `place`).
    pub fn update(&mut self, place: Place, position: LatLng, row: Row) -> (Place, Option<u32>) {
        if self.pages[place.page as usize].key == key_of(position) {
            self.pages[place.page as usize].rows[place.row as usize] = row;
            return (place, None);
        }
        let shifted = self.remove(place);
        (self.insert(position, row), shifted)
    }

    pub fn insert(&mut self, position: LatLng, row: Row) -> Place {
        let key = key_of(position);
        let page = match self.by_key.get(&key) {
            Some(&page) => page,
            None => self.open(key),
        };
        let rows = &mut self.pages[page as usize].rows;
        rows.push(row);
        Place {
            page,
            row: (rows.len() - 1) as u32,
        }
    }

    /// Takes the row at `place` out. Returns the slot of the row moved into its place.
    pub fn remove(&mut self, place: Place) -> Option<u32> {
        let rows = &mut self.pages[place.page as usize].rows;
        rows.swap_remove(place.row as usize);
        rows.get(place.row as usize).map(|row| row.slot)
    }

    fn open(&mut self, key: Key) -> u32 {
        let page = Page {
            key,
            rows: Vec::new(),
            open: true,
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.pages[index as usize] = page;
                index
            }
            None => {
                self.pages.push(page);
                (self.pages.len() - 1) as u32
            }
        };
        self.by_key.insert(key, index);
        self.tree.insert(PageEntry {
            envelope: cell(key),
            page: index,
        });
        index
    }

    /// Rows held, and pages open (in the tree).
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let open = self.pages.iter().filter(|page| page.open);
        let rows = open.clone().map(|page| page.rows.len()).sum();
        debug_assert_eq!(self.tree.size(), open.clone().count());
        (rows, open.count())
    }

    /// Where the row of `slot` is, if it has one (checks the page agrees).
    #[cfg(test)]
    pub fn row(&self, place: Place) -> Row {
        self.pages[place.page as usize].rows[place.row as usize]
    }

    /// Forgets the pages left empty (drivers drove away), so a fleet that roams the
    /// country does not keep a page for every cell it ever crossed.
    pub fn sweep_empty(&mut self) {
        for index in 0..self.pages.len() {
            let page = &mut self.pages[index];
            if !page.open || !page.rows.is_empty() {
                continue;
            }
            let key = page.key;
            page.rows = Vec::new();
            page.open = false;
            self.by_key.remove(&key);
            self.tree.remove(&PageEntry {
                envelope: cell(key),
                page: index as u32,
            });
            self.free.push(index as u32);
        }
    }

    /// How many drivers the cell of `position` holds: the local density, to guess how
    /// far a query must reach.
    pub fn rows_at(&self, position: LatLng) -> usize {
        self.by_key
            .get(&key_of(position))
            .map_or(0, |&page| self.pages[page as usize].rows.len())
    }

    /// Every row whose driver may be within `reach_m` of `centre` (and some beyond):
    /// the rows of every page meeting the latitude/longitude box around the spherical cap.
    pub fn near(&self, centre: LatLng, reach_m: f64, mut visit: impl FnMut(&Row)) {
        let angle = reach_m / EARTH_RADIUS_M;
        let lat_reach = angle.to_degrees() * (1.0 + 1e-6);
        let (south, north) = (
            (centre.lat() - lat_reach).max(-90.0),
            (centre.lat() + lat_reach).min(90.0),
        );
        // The cap's longitude half-width: asin(sin a / cos φ), or every longitude when the
        // cap holds a pole. A margin of a millionth covers the rounding.
        let cos_lat = centre.lat().to_radians().cos();
        let lng_reach = if angle.sin() < cos_lat {
            (angle.sin() / cos_lat).asin().to_degrees() * (1.0 + 1e-6)
        } else {
            180.0
        };
        let (west, east) = (centre.lng() - lng_reach, centre.lng() + lng_reach);
        // Across the antimeridian, the other side too.
        let boxes = [
            Some([west.max(-180.0), east.min(180.0)]),
            (west < -180.0).then_some([west + 360.0, 180.0]),
            (east > 180.0).then_some([-180.0, east - 360.0]),
        ];
        // The pages first, then their rows: the reads of different pages do not wait on
        // each other, so their cache misses overlap.
        let mut pages: Vec<&[Row]> = Vec::with_capacity(32);
        for [west, east] in boxes.into_iter().flatten() {
            let area = AABB::from_corners([south, west], [north, east]);
            pages.extend(
                self.tree
                    .locate_in_envelope_intersecting(&area)
                    .map(|entry| self.pages[entry.page as usize].rows.as_slice()),
            );
        }
        pages.into_iter().flatten().for_each(&mut visit);
    }
}
