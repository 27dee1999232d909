//! Where the dispatchable drivers are: an `rstar` R-tree of *blocks*, each an 8 × 8 patch
//! of a latitude/longitude grid whose cells (about 330 m a side in Korea) are *pages*
//! holding their drivers' rows inline — as a disk R-tree's leaf pages hold many entries,
//! not one.
//!
//! A driver moving inside its cell is a write to its row; crossing into the next cell is
//! a swap-remove from one page and a push onto another — the tree changes only when a
//! block gets its first driver (empty blocks stay until [`Pages::sweep_empty`]). A query
//! asks the tree for the blocks meeting a latitude/longitude box around the pickup — a
//! few thousand blocks hold a country's 250,000 drivers, so the tree stays in the cache —
//! and reads the rows of the cells the box meets, a few contiguous cache lines each (a
//! row is 16 bytes: see [`Row`]).

use rstar::{
    AABB, Envelope, ParentNode, RStarInsertionStrategy, RTree, RTreeNode, RTreeObject, RTreeParams,
};
use smallvec::SmallVec;

use crate::geometry::{EARTH_RADIUS_M, LatLng};

/// A cell's side in degrees of latitude (≈ 334 m). Larger cells mean fewer pages to read
/// where drivers are sparse and more rows where they are dense: at 250,000 drivers around
/// Korea's cities, 330 m answered faster than 220 m (`benches/fleet.rs`).
pub(super) const CELL_LAT_DEG: f64 = 0.003;
/// A cell's side in metres, north to south.
pub const CELL_SIDE_M: f64 = CELL_LAT_DEG * EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
/// A cell's side in degrees of longitude (≈ 330 m at Seoul's latitude, 417 m at the
/// equator).
pub(super) const CELL_LNG_DEG: f64 = 0.00375;

/// A block's side is 2^BLOCK_BITS cells (8: about 2.7 km), so a cell's block is its key
/// shifted.
const BLOCK_BITS: u32 = 3;
const BLOCK_SIDE: i32 = 1 << BLOCK_BITS;
const BLOCK_CELLS: usize = (BLOCK_SIDE * BLOCK_SIDE) as usize;

/// A dispatchable driver as the index gives it to the pages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Driver {
    /// Where it is: its position's unit vector.
    pub unit: [f64; 3],
    /// The driver's slot in the index.
    pub slot: u32,
    /// Has a live socket (the page holds only drivers who said `available`, have a
    /// position and no trip): dispatchable unless its last ping is stale.
    pub ready: bool,
}

/// What a query reads of a driver: 16 bytes, inline in its page, so that a page's rows
/// take half the cache lines they would in double precision. Not when it last pinged: a
/// stale driver is rare, and is turned away when its answer is read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    /// The driver's unit vector less its block's reference, in single precision: a
    /// block is under 3 km across, so the offsets are below 5·10⁻⁴ and keep their
    /// position to a tenth of a millimetre.
    offset: [f32; 3],
    /// The slot, and whether the driver is ready in the top bit.
    slot_ready: u32,
}

const READY: u32 = 1 << 31;

impl Row {
    fn new(driver: Driver, reference: &[f64; 3]) -> Row {
        debug_assert!(driver.slot < READY, "slots are far fewer");
        Row {
            offset: std::array::from_fn(|i| (driver.unit[i] - reference[i]) as f32),
            slot_ready: driver.slot | if driver.ready { READY } else { 0 },
        }
    }

    pub fn slot(&self) -> u32 {
        self.slot_ready & !READY
    }

    pub fn ready(&self) -> bool {
        self.slot_ready & READY != 0
    }

    /// The squared chord to the point whose offset from this row's block's reference is
    /// `from` (double precision).
    #[inline(always)]
    fn squared_chord(&self, from: &[f64; 3]) -> f64 {
        let d = std::array::from_fn::<f64, 3, _>(|i| from[i] - f64::from(self.offset[i]));
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    }
}

/// Which cell, in which block, and which row of its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    cell: Key,
    block: u32,
    row: u32,
}

/// A cell's or a block's (row, column) in the grid: latitude and longitude steps from
/// (0°, 0°).
type Key = (i32, i32);

struct Block {
    key: Key,
    /// The unit vector its rows are offsets from: its centre's.
    reference: [f64; 3],
    /// Its cells' pages, row-major: cell (i, j) is at (i mod 8) · 8 + j mod 8.
    cells: [Vec<Row>; BLOCK_CELLS],
    /// In the tree and the key map (not on the free list).
    open: bool,
}

/// A block in the tree: its key too, so that a query finds its cells without reading the
/// block first.
#[derive(Debug, Clone, PartialEq)]
struct BlockEntry {
    envelope: AABB<[f64; 2]>,
    key: Key,
    block: u32,
}

impl RTreeObject for BlockEntry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// Wide nodes: the tree changes only when a block opens or closes, so its insertion cost
/// hardly matters, and a query visits fewer, fuller nodes.
struct BlockParams;

impl RTreeParams for BlockParams {
    const MIN_SIZE: usize = 6;
    const MAX_SIZE: usize = 16;
    const REINSERTION_COUNT: usize = 4;
    type DefaultInsertionStrategy = RStarInsertionStrategy;
}

#[derive(Default)]
pub(super) struct Pages {
    tree: RTree<BlockEntry, BlockParams>,
    blocks: Vec<Block>,
    by_key: std::collections::HashMap<Key, u32, foldhash::fast::RandomState>,
    free: Vec<u32>,
}

/// `x` rounded down, for a grid step: `f64::floor` is a call into libm where the target
/// lacks SSE4.1, and a query takes a dozen. Exact for |x| below 2³¹ (a grid step of
/// longitude is 48,000 at most).
fn floor(x: f64) -> i32 {
    let truncated = x as i32;
    truncated - i32::from(f64::from(truncated) > x)
}

fn cell_of(position: LatLng) -> Key {
    (
        floor(position.lat() / CELL_LAT_DEG),
        floor(position.lng() / CELL_LNG_DEG),
    )
}

/// The block holding `cell` (an arithmetic shift floors negative keys too).
fn block_of(cell: Key) -> Key {
    (cell.0 >> BLOCK_BITS, cell.1 >> BLOCK_BITS)
}

/// Where `cell`'s page is in its block.
fn page_of(cell: Key) -> usize {
    let mask = BLOCK_SIDE - 1;
    ((cell.0 & mask) * BLOCK_SIDE + (cell.1 & mask)) as usize
}

/// A block's extent, a billionth of a degree wider all round than its cells, so that no
/// rounding can leave a row's position outside its block's envelope.
fn envelope(block: Key) -> AABB<[f64; 2]> {
    const SLACK: f64 = 1e-9;
    let (south, west) = (
        f64::from(block.0 * BLOCK_SIDE) * CELL_LAT_DEG,
        f64::from(block.1 * BLOCK_SIDE) * CELL_LNG_DEG,
    );
    let (north, east) = (
        south + f64::from(BLOCK_SIDE) * CELL_LAT_DEG,
        west + f64::from(BLOCK_SIDE) * CELL_LNG_DEG,
    );
    AABB::from_corners([south - SLACK, west - SLACK], [north + SLACK, east + SLACK])
}

impl Pages {
    /// Updates the row at `place` if `position` is still in its cell; otherwise moves the
    /// row to the right page. Returns its place, and the slot of a row that the move
    /// shifted (its place is now the old `place`).
    pub fn update(
        &mut self,
        place: Place,
        position: LatLng,
        driver: Driver,
    ) -> (Place, Option<u32>) {
        let cell = cell_of(position);
        if cell == place.cell {
            let block = &mut self.blocks[place.block as usize];
            block.cells[page_of(cell)][place.row as usize] = Row::new(driver, &block.reference);
            return (place, None);
        }
        let shifted = self.remove(place);
        (self.insert_in(cell, driver), shifted)
    }

    pub fn insert(&mut self, position: LatLng, driver: Driver) -> Place {
        self.insert_in(cell_of(position), driver)
    }

    fn insert_in(&mut self, cell: Key, driver: Driver) -> Place {
        let key = block_of(cell);
        let block = match self.by_key.get(&key) {
            Some(&block) => block,
            None => self.open(key),
        };
        let Block {
            reference, cells, ..
        } = &mut self.blocks[block as usize];
        let rows = &mut cells[page_of(cell)];
        rows.push(Row::new(driver, reference));
        Place {
            cell,
            block,
            row: (rows.len() - 1) as u32,
        }
    }

    /// Takes the row at `place` out. Returns the slot of the row moved into its place.
    pub fn remove(&mut self, place: Place) -> Option<u32> {
        let rows = &mut self.blocks[place.block as usize].cells[page_of(place.cell)];
        rows.swap_remove(place.row as usize);
        rows.get(place.row as usize).map(Row::slot)
    }

    fn open(&mut self, key: Key) -> u32 {
        let extent = envelope(key);
        let [lat, lng] = extent.center();
        let centre = LatLng::new(lat.clamp(-90.0, 90.0), lng.clamp(-180.0, 180.0))
            .expect("clamped to the valid range");
        let block = Block {
            key,
            reference: centre.unit_vector(),
            cells: std::array::from_fn(|_| Vec::new()),
            open: true,
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.blocks[index as usize] = block;
                index
            }
            None => {
                self.blocks.push(block);
                (self.blocks.len() - 1) as u32
            }
        };
        self.by_key.insert(key, index);
        self.tree.insert(BlockEntry {
            envelope: extent,
            key,
            block: index,
        });
        index
    }

    /// Rows held, and blocks open (in the tree).
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let open = self.blocks.iter().filter(|block| block.open);
        let rows = open.clone().flat_map(|block| &block.cells).map(Vec::len);
        debug_assert_eq!(self.tree.size(), open.clone().count());
        (rows.sum(), open.count())
    }

    /// The row at `place`: its slot, and the squared chord from `unit` to it.
    #[cfg(test)]
    pub fn row(&self, place: Place, unit: &[f64; 3]) -> (u32, f64) {
        let block = &self.blocks[place.block as usize];
        let row = block.cells[page_of(place.cell)][place.row as usize];
        let from = std::array::from_fn(|i| unit[i] - block.reference[i]);
        (row.slot(), row.squared_chord(&from))
    }

    /// Forgets the blocks left empty (drivers drove away), so a fleet that roams the
    /// country does not keep a block for every place it ever crossed; and the memory of
    /// empty pages.
    pub fn sweep_empty(&mut self) {
        for index in 0..self.blocks.len() {
            let block = &mut self.blocks[index];
            if !block.open {
                continue;
            }
            for rows in block.cells.iter_mut().filter(|rows| rows.is_empty()) {
                *rows = Vec::new();
            }
            if block.cells.iter().any(|rows| !rows.is_empty()) {
                continue;
            }
            let key = block.key;
            block.open = false;
            self.by_key.remove(&key);
            self.tree.remove(&BlockEntry {
                envelope: envelope(key),
                key,
                block: index as u32,
            });
            self.free.push(index as u32);
        }
    }

    /// Drivers per cell around `position` (the mean of its cell and the eight around it):
    /// the local density, to guess how far a query must reach.
    pub fn density_at(&self, position: LatLng) -> f64 {
        let (row, column) = cell_of(position);
        // Nine cells lie in one to four blocks: the blocks of two opposite corners' rows
        // and columns. Each is looked up once.
        let (south, north) = (block_of((row - 1, 0)).0, block_of((row + 1, 0)).0);
        let (west, east) = (block_of((0, column - 1)).1, block_of((0, column + 1)).1);
        let look = |key: Key| {
            self.by_key
                .get(&key)
                .map(|&block| &self.blocks[block as usize])
        };
        let south_west = look((south, west));
        let south_east = if east == west {
            south_west
        } else {
            look((south, east))
        };
        let (north_west, north_east) = if north == south {
            (south_west, south_east)
        } else {
            let north_west = look((north, west));
            let north_east = if east == west {
                north_west
            } else {
                look((north, east))
            };
            (north_west, north_east)
        };
        let blocks = [[south_west, south_east], [north_west, north_east]];
        let mut drivers = 0;
        for row in row - 1..=row + 1 {
            let by_column = &blocks[usize::from(block_of((row, 0)).0 != south)];
            for column in column - 1..=column + 1 {
                if let Some(block) = by_column[usize::from(block_of((0, column)).1 != west)] {
                    drivers += block.cells[page_of((row, column))].len();
                }
            }
        }
        drivers as f64 / 9.0
    }

    /// Every row whose driver may be within `reach_m` of `centre` (and some beyond), with
    /// the squared chord to it from `centre`, whose unit vector is `unit`: the rows of
    /// every cell meeting the latitude/longitude box around the spherical cap.
    pub fn near(
        &self,
        centre: LatLng,
        unit: &[f64; 3],
        reach_m: f64,
        mut visit: impl FnMut(f64, &Row),
    ) {
        let angle = reach_m / EARTH_RADIUS_M;
        let lat_reach = angle.to_degrees() * (1.0 + 1e-6);
        let (south, north) = (
            (centre.lat() - lat_reach).max(-90.0),
            (centre.lat() + lat_reach).min(90.0),
        );
        // The cap's longitude half-width, asin(sin a / cos φ), or every longitude when the
        // cap holds a pole; bounded from above without a call into libm, by a for sin a and
        // x / √(1 − x²) for asin x (tan of the same angle): wider by a part in 10⁷ at 3 km.
        // A margin of a millionth covers the rounding.
        let cos_lat = (unit[0] * unit[0] + unit[1] * unit[1]).sqrt();
        let sine = angle / cos_lat;
        let lng_reach = if sine < 1.0 {
            (sine / (1.0 - sine * sine).sqrt()).to_degrees() * (1.0 + 1e-6)
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
        // A cell in a corner of the box may lie wholly outside the cap: it is skipped if its
        // nearest point is beyond the reach, measured flat (metres north, and east at the
        // cosine of the box's poleward edge, which shortens it) with 1 % and a metre to
        // spare for the Earth's curve — for reaches up to 10 km, where the flat error is
        // far smaller, and boxes that neither wrap nor hold a pole.
        let flat =
            reach_m <= 10_000.0 && lng_reach < 180.0 && boxes[1..].iter().all(Option::is_none);
        let metres_per_degree = EARTH_RADIUS_M.to_radians();
        // That cosine, cos(|φ| + δ), bounded from below without a call into libm (cos δ ≥
        // 1 − δ²/2, sin δ ≤ δ): a lower bound only shortens the flat measure.
        let delta = lat_reach.to_radians();
        let cos_edge = (cos_lat * (1.0 - delta * delta / 2.0) - unit[2].abs() * delta).max(0.0);
        let east_scale = metres_per_degree * cos_edge;
        let beyond = (reach_m * 1.01 + 1.0).powi(2);
        let outside = |row: i32, column: i32| {
            let (row_south, column_west) = (
                f64::from(row) * CELL_LAT_DEG,
                f64::from(column) * CELL_LNG_DEG,
            );
            let north_of = (row_south - centre.lat())
                .max(centre.lat() - row_south - CELL_LAT_DEG)
                .max(0.0);
            let east_of = (column_west - centre.lng())
                .max(centre.lng() - column_west - CELL_LNG_DEG)
                .max(0.0);
            flat && (north_of * metres_per_degree).powi(2) + (east_of * east_scale).powi(2) > beyond
        };
        // The cells the box meets, by the same rounding that put each row in its cell.
        let rows_from = floor(south / CELL_LAT_DEG);
        let rows_to = floor(north / CELL_LAT_DEG);
        // The pages first, then their rows: the reads of different pages do not wait on
        // each other, so their cache misses overlap.
        let mut pages: SmallVec<[([f64; 3], &[Row]); 32]> = SmallVec::new();
        for [west, east] in boxes.into_iter().flatten() {
            let columns_from = floor(west / CELL_LNG_DEG);
            let columns_to = floor(east / CELL_LNG_DEG);
            let area = AABB::from_corners([south, west], [north, east]);
            blocks_meeting(self.tree.root(), &area, &mut |entry| {
                let block = &self.blocks[entry.block as usize];
                // The centre as an offset from the block's reference, as its rows are.
                let from = std::array::from_fn(|i| unit[i] - block.reference[i]);
                let (first_row, first_column) =
                    (entry.key.0 * BLOCK_SIDE, entry.key.1 * BLOCK_SIDE);
                let columns =
                    columns_from.max(first_column)..=columns_to.min(first_column + BLOCK_SIDE - 1);
                for row in rows_from.max(first_row)..=rows_to.min(first_row + BLOCK_SIDE - 1) {
                    for column in columns.clone() {
                        let rows = &block.cells[page_of((row, column))];
                        if !rows.is_empty() && !outside(row, column) {
                            pages.push((from, rows));
                        }
                    }
                }
            });
        }
        for (_, rows) in &pages {
            for line in rows.chunks(4) {
                prefetch(line.as_ptr());
            }
        }
        for (from, rows) in &pages {
            for row in *rows {
                visit(row.squared_chord(from), row);
            }
        }
    }
}

/// Asks for the cache line at `data` ahead of its use.
#[inline(always)]
pub(super) fn prefetch<T>(data: *const T) {
    // SAFETY: a prefetch is a hint: it changes nothing the program sees and faults on no
    // address; SSE, which it needs, is part of every x86-64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(data.cast())
    };
}

/// The blocks under `node` whose envelope meets `area`. rstar's
/// `locate_in_envelope_intersecting` stacks every child of a node it enters and then
/// checks each as it takes it off; this checks each child where it lies and enters only
/// the nodes that meet the area — a sixth of the query's instructions went to the stack
/// (`benches/fleet.rs` under cachegrind).
fn blocks_meeting<'a>(
    node: &'a ParentNode<BlockEntry>,
    area: &AABB<[f64; 2]>,
    found: &mut impl FnMut(&'a BlockEntry),
) {
    for child in node.children() {
        match child {
            RTreeNode::Leaf(entry) if entry.envelope.intersects(area) => found(entry),
            RTreeNode::Parent(parent) if parent.envelope().intersects(area) => {
                blocks_meeting(parent, area, found)
            }
            _ => {}
        }
    }
}
