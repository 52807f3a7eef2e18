//! `shapes`: an infinite procedural dataset of coloured geometric shapes with compositional
//! captions that are true of the picture, e.g. "a small red circle above a large blue square on
//! a white background". It needs no files, so tests and smoke runs of the whole pipeline can use
//! it anywhere.
//!
//! Example `i` is a pure function of (seed, i): a scene is drawn from a SplitMix64 stream keyed
//! by both, then rendered at the configured resolution. Scenes are of three kinds:
//! - one object, optionally with its place: "a large green star at the top left on a black
//!   background";
//! - two objects in a spatial relation: "a small red circle to the left of a large blue square
//!   on a gray background";
//! - a group of identical objects: "three small yellow triangles on a white background".
//!
//! Truth by construction: every object lies inside its box `centre ± radius`, and boxes are
//! kept apart by a gap, so objects never overlap and the pixel at an object's centre has exactly
//! the object's colour (at 48 px and above, where even a small star covers its centre pixel).
//! "A above B" means A's box lies wholly above B's and the vertical offset is at least the
//! horizontal one (likewise for left/right); a named place means the centre lies in that cell of
//! a 3x3 grid. Captions say "left" and "right", so do not train on them with random flips.

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Example};
use crate::error::DataError;
use crate::image::Image;
use crate::rng::{SplitMix64, hash_u64s};

/// A colour with the word captions use for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedColour {
    /// The caption word.
    pub name: &'static str,
    /// Its RGB value.
    pub rgb: [u8; 3],
}

const fn colour(name: &'static str, r: u8, g: u8, b: u8) -> NamedColour {
    NamedColour {
        name,
        rgb: [r, g, b],
    }
}

/// Colours objects are drawn in: far apart in RGB so each is unmistakable.
pub const OBJECT_COLOURS: [NamedColour; 12] = [
    colour("red", 230, 25, 25),
    colour("green", 30, 170, 60),
    colour("blue", 30, 70, 220),
    colour("yellow", 245, 215, 30),
    colour("orange", 245, 130, 20),
    colour("purple", 130, 50, 180),
    colour("pink", 245, 140, 200),
    colour("cyan", 40, 210, 230),
    colour("brown", 125, 75, 35),
    colour("white", 255, 255, 255),
    colour("black", 0, 0, 0),
    colour("gray", 128, 128, 128),
];

/// Background colours; an object never takes its background's colour.
pub const BACKGROUND_COLOURS: [NamedColour; 4] = [
    colour("white", 255, 255, 255),
    colour("black", 0, 0, 0),
    colour("gray", 128, 128, 128),
    colour("beige", 235, 225, 200),
];

/// The kinds of shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    /// A disc of radius r.
    Circle,
    /// An axis-aligned square of half side 0.85 r.
    Square,
    /// An upright equilateral triangle with circumradius r about its centroid.
    Triangle,
    /// A square standing on a corner, half diagonal r.
    Diamond,
    /// A five-pointed star, outer radius r, inner radius r/2, one point up.
    Star,
    /// A regular hexagon with circumradius r and two vertical sides.
    Hexagon,
}

impl ShapeKind {
    /// All kinds.
    pub const ALL: [ShapeKind; 6] = [
        ShapeKind::Circle,
        ShapeKind::Square,
        ShapeKind::Triangle,
        ShapeKind::Diamond,
        ShapeKind::Star,
        ShapeKind::Hexagon,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Diamond => "diamond",
            ShapeKind::Star => "star",
            ShapeKind::Hexagon => "hexagon",
        }
    }

    /// The caption word for several.
    pub fn plural(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circles",
            ShapeKind::Square => "squares",
            ShapeKind::Triangle => "triangles",
            ShapeKind::Diamond => "diamonds",
            ShapeKind::Star => "stars",
            ShapeKind::Hexagon => "hexagons",
        }
    }

    /// Whether the offset (dx, dy) from the shape's centre, in units of its radius and with y
    /// pointing down, is inside the shape.
    pub fn contains(self, dx: f64, dy: f64) -> bool {
        match self {
            ShapeKind::Circle => dx * dx + dy * dy <= 1.0,
            ShapeKind::Square => dx.abs() <= 0.85 && dy.abs() <= 0.85,
            ShapeKind::Diamond => dx.abs() + dy.abs() <= 1.0,
            ShapeKind::Triangle => in_polygon(&TRIANGLE, dx, dy),
            ShapeKind::Hexagon => in_polygon(&HEXAGON, dx, dy),
            ShapeKind::Star => in_polygon(&STAR, dx, dy),
        }
    }
}

const S3: f64 = 0.866_025_403_784_438_6; // sqrt(3)/2

/// Vertices at angles -90, 30, 150 degrees (y down), so one points up.
const TRIANGLE: [(f64, f64); 3] = [(0.0, -1.0), (S3, 0.5), (-S3, 0.5)];
const HEXAGON: [(f64, f64); 6] = [
    (0.0, -1.0),
    (S3, -0.5),
    (S3, 0.5),
    (0.0, 1.0),
    (-S3, 0.5),
    (-S3, -0.5),
];
/// Outer points at -90 + 72k degrees (radius 1), inner at -54 + 72k (radius 1/2).
const STAR: [(f64, f64); 10] = [
    (0.0, -1.0),
    (0.293_892_626_146_236_6, -0.404_508_497_187_473_7),
    (0.951_056_516_295_153_5, -0.309_016_994_374_947_45),
    (0.475_528_258_147_576_8, 0.154_508_497_187_473_7),
    (0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (0.0, 0.5),
    (-0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (-0.475_528_258_147_576_8, 0.154_508_497_187_473_7),
    (-0.951_056_516_295_153_5, -0.309_016_994_374_947_45),
    (-0.293_892_626_146_236_6, -0.404_508_497_187_473_7),
];

/// Even-odd rule point-in-polygon test.
fn in_polygon(vertices: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = vertices.len() - 1;
    for i in 0..vertices.len() {
        let (xi, yi) = vertices[i];
        let (xj, yj) = vertices[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// The two object sizes; radii are fractions of the image side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Radius in [0.08, 0.11) of the side.
    Small,
    /// Radius in [0.17, 0.22) of the side.
    Large,
}

impl Size {
    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    fn radius_range(self) -> (f64, f64) {
        match self {
            Size::Small => (0.08, 0.11),
            Size::Large => (0.17, 0.22),
        }
    }
}

/// A spatial relation between the first and second object of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// First wholly above second.
    Above,
    /// First wholly below second.
    Below,
    /// First wholly left of second.
    LeftOf,
    /// First wholly right of second.
    RightOf,
}

impl Relation {
    /// All relations.
    pub const ALL: [Relation; 4] = [
        Relation::Above,
        Relation::Below,
        Relation::LeftOf,
        Relation::RightOf,
    ];

    /// The caption words.
    pub fn words(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
        }
    }

    /// Whether `a` stands in this relation to `b` (boxes apart along the relation's axis, and
    /// that axis dominant).
    pub fn holds(self, a: &ShapeObject, b: &ShapeObject) -> bool {
        let (dx, dy) = (b.centre.0 - a.centre.0, b.centre.1 - a.centre.1);
        let reach = a.radius + b.radius;
        match self {
            Relation::Above => dy > reach && dy >= dx.abs(),
            Relation::Below => -dy > reach && -dy >= dx.abs(),
            Relation::LeftOf => dx > reach && dx >= dy.abs(),
            Relation::RightOf => -dx > reach && -dx >= dy.abs(),
        }
    }
}

/// A cell of the 3x3 grid, named in captions of single objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Column 0 (left) to 2 (right).
    pub column: u8,
    /// Row 0 (top) to 2 (bottom).
    pub row: u8,
}

impl Place {
    /// The caption words, e.g. "at the top left", "in the center".
    pub fn words(self) -> &'static str {
        const WORDS: [[&str; 3]; 3] = [
            ["at the top left", "at the top", "at the top right"],
            ["at the left", "in the center", "at the right"],
            ["at the bottom left", "at the bottom", "at the bottom right"],
        ];
        WORDS[self.row as usize][self.column as usize]
    }

    /// The cell holding a point given in fractions of the side.
    pub fn of(x: f64, y: f64) -> Place {
        let cell = |v: f64| ((v * 3.0).floor() as i64).clamp(0, 2) as u8;
        Place {
            column: cell(x),
            row: cell(y),
        }
    }
}

/// One drawn object. Coordinates are fractions of the image side, y pointing down.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapeObject {
    /// Its shape.
    pub kind: ShapeKind,
    /// Its colour.
    pub colour: NamedColour,
    /// Its size class.
    pub size: Size,
    /// Centre (x, y): the disc/square/diamond/star/hexagon centre, the triangle's centroid.
    pub centre: (f64, f64),
    /// Radius; the object lies within `centre ± radius` on both axes.
    pub radius: f64,
}

impl ShapeObject {
    fn phrase(&self) -> String {
        format!(
            "a {} {} {}",
            self.size.name(),
            self.colour.name,
            self.kind.name()
        )
    }

    /// Whether the point (x, y), in fractions of the side, lies inside the object.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        self.kind.contains(
            (x - self.centre.0) / self.radius,
            (y - self.centre.1) / self.radius,
        )
    }
}

/// How the objects of a scene relate, which decides the caption's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One object, its place named or not.
    Single(Option<Place>),
    /// Two objects, the first in this relation to the second.
    Pair(Relation),
    /// Two to four identical objects.
    Group,
}

/// A procedural scene: what is drawn, and the caption that describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// Background colour.
    pub background: NamedColour,
    /// The objects, in caption order.
    pub objects: Vec<ShapeObject>,
    /// Caption form.
    pub layout: Layout,
}

/// Count words of group captions, indexed by the count.
pub const NUMBER_WORDS: [&str; 5] = ["zero", "one", "two", "three", "four"];
/// Minimum distance between two objects' boxes, as a fraction of the side.
const GAP: f64 = 0.03;
/// Minimum distance between a box and the image border.
const MARGIN: f64 = 0.01;

impl Scene {
    /// The caption, true of the picture.
    pub fn caption(&self) -> String {
        let bg = format!("on a {} background", self.background.name);
        match self.layout {
            Layout::Single(place) => {
                let obj = self.objects[0].phrase();
                match place {
                    Some(p) => format!("{obj} {} {bg}", p.words()),
                    None => format!("{obj} {bg}"),
                }
            }
            Layout::Pair(rel) => format!(
                "{} {} {} {bg}",
                self.objects[0].phrase(),
                rel.words(),
                self.objects[1].phrase()
            ),
            Layout::Group => {
                let o = &self.objects[0];
                format!(
                    "{} {} {} {} {bg}",
                    NUMBER_WORDS[self.objects.len()],
                    o.size.name(),
                    o.colour.name,
                    o.kind.plural()
                )
            }
        }
    }

    /// Draws a scene from `rng`.
    pub fn sample(rng: &mut SplitMix64) -> Scene {
        let background = *rng.choose(&BACKGROUND_COLOURS);
        let colours: Vec<NamedColour> = OBJECT_COLOURS
            .iter()
            .copied()
            .filter(|c| c.rgb != background.rgb)
            .collect();
        let object = |rng: &mut SplitMix64, size: Size| {
            let (lo, hi) = size.radius_range();
            ShapeObject {
                kind: *rng.choose(&ShapeKind::ALL),
                colour: *rng.choose(&colours),
                size,
                centre: (0.5, 0.5),
                radius: rng.uniform(lo, hi),
            }
        };
        let size = |rng: &mut SplitMix64| {
            if rng.chance(0.5) {
                Size::Small
            } else {
                Size::Large
            }
        };
        let u = rng.next_f64();
        if u < 0.35 {
            let s = size(rng);
            let mut o = object(rng, s);
            let place = if rng.chance(0.7) {
                let p = Place {
                    column: rng.below(3) as u8,
                    row: rng.below(3) as u8,
                };
                o.centre = (
                    coordinate_in_cell(rng, p.column, o.radius),
                    coordinate_in_cell(rng, p.row, o.radius),
                );
                Some(p)
            } else {
                o.centre = (
                    rng.uniform(o.radius + MARGIN, 1.0 - o.radius - MARGIN),
                    rng.uniform(o.radius + MARGIN, 1.0 - o.radius - MARGIN),
                );
                None
            };
            Scene {
                background,
                objects: vec![o],
                layout: Layout::Single(place),
            }
        } else if u < 0.75 {
            let relation = *rng.choose(&Relation::ALL);
            let (sa, sb) = (size(rng), size(rng));
            let mut a = object(rng, sa);
            let mut b = object(rng, sb);
            place_pair(rng, relation, &mut a, &mut b);
            Scene {
                background,
                objects: vec![a, b],
                layout: Layout::Pair(relation),
            }
        } else {
            let count = 2 + rng.below(3) as usize;
            // Four large objects barely fit; groups of three or four are small.
            let s = if count == 2 { size(rng) } else { Size::Small };
            let template = object(rng, s);
            let mut objects = vec![template; count];
            place_group(rng, &mut objects);
            Scene {
                background,
                objects,
                layout: Layout::Group,
            }
        }
    }

    /// Renders the scene as a `resolution x resolution` image. With `anti_alias`, edge pixels
    /// blend object and background by coverage (4x4 samples per pixel); pixels wholly inside
    /// an object have its exact colour either way.
    pub fn render(&self, resolution: u32, anti_alias: bool) -> Image {
        let mut img = Image::filled(resolution, resolution, self.background.rgb);
        let res = resolution as f64;
        let samples: &[f64] = if anti_alias {
            &[0.125, 0.375, 0.625, 0.875]
        } else {
            &[0.5]
        };
        let n_samples = (samples.len() * samples.len()) as u32;
        for o in &self.objects {
            let (cx, cy, r) = (o.centre.0 * res, o.centre.1 * res, o.radius * res);
            let x0 = (cx - r).floor().max(0.0) as u32;
            let y0 = (cy - r).floor().max(0.0) as u32;
            let x1 = ((cx + r).ceil() as u32).min(resolution);
            let y1 = ((cy + r).ceil() as u32).min(resolution);
            for y in y0..y1 {
                for x in x0..x1 {
                    let mut hits = 0u32;
                    for &sy in samples {
                        for &sx in samples {
                            let dx = (x as f64 + sx - cx) / r;
                            let dy = (y as f64 + sy - cy) / r;
                            hits += o.kind.contains(dx, dy) as u32;
                        }
                    }
                    if hits == 0 {
                        continue;
                    }
                    let under = img.pixel(x, y);
                    let mut out = [0u8; 3];
                    for c in 0..3 {
                        let v = (o.colour.rgb[c] as u32 * hits
                            + under[c] as u32 * (n_samples - hits)
                            + n_samples / 2)
                            / n_samples;
                        out[c] = v as u8;
                    }
                    img.set_pixel(x, y, out);
                }
            }
        }
        img
    }
}

/// A centre coordinate inside grid cell `cell` (0..3) that keeps the object in the image.
fn coordinate_in_cell(rng: &mut SplitMix64, cell: u8, radius: f64) -> f64 {
    // Keep a little away from cell borders so rounding never moves the centre across.
    let lo = (cell as f64 / 3.0 + 0.02).max(radius + MARGIN);
    let hi = ((cell as f64 + 1.0) / 3.0 - 0.02).min(1.0 - radius - MARGIN);
    rng.uniform(lo, hi.max(lo))
}

fn apart(a: &ShapeObject, b: &ShapeObject) -> bool {
    let reach = a.radius + b.radius + GAP;
    (a.centre.0 - b.centre.0).abs() >= reach || (a.centre.1 - b.centre.1).abs() >= reach
}

fn random_centre(rng: &mut SplitMix64, radius: f64) -> (f64, f64) {
    let (lo, hi) = (radius + MARGIN, 1.0 - radius - MARGIN);
    (rng.uniform(lo, hi), rng.uniform(lo, hi))
}

/// Places `a` and `b` so that `a relation b` holds with the boxes a gap apart.
fn place_pair(rng: &mut SplitMix64, relation: Relation, a: &mut ShapeObject, b: &mut ShapeObject) {
    for _ in 0..200 {
        a.centre = random_centre(rng, a.radius);
        b.centre = random_centre(rng, b.radius);
        let along = match relation {
            Relation::Above => b.centre.1 - a.centre.1,
            Relation::Below => a.centre.1 - b.centre.1,
            Relation::LeftOf => b.centre.0 - a.centre.0,
            Relation::RightOf => a.centre.0 - b.centre.0,
        };
        if along >= a.radius + b.radius + GAP && relation.holds(a, b) {
            return;
        }
    }
    // Always feasible: both at mid-line, each against its own edge (2 * 0.44 + gap < 1).
    let (first, second) = (a.radius + MARGIN, 1.0 - b.radius - MARGIN);
    let (a_pos, b_pos) = match relation {
        Relation::Above | Relation::LeftOf => (first, second),
        Relation::Below | Relation::RightOf => (1.0 - a.radius - MARGIN, b.radius + MARGIN),
    };
    match relation {
        Relation::Above | Relation::Below => {
            a.centre = (0.5, a_pos);
            b.centre = (0.5, b_pos);
        }
        Relation::LeftOf | Relation::RightOf => {
            a.centre = (a_pos, 0.5);
            b.centre = (b_pos, 0.5);
        }
    }
}

/// Places equal objects so that no two boxes come within a gap.
fn place_group(rng: &mut SplitMix64, objects: &mut [ShapeObject]) {
    'attempt: for _ in 0..50 {
        for i in 0..objects.len() {
            let mut placed = false;
            for _ in 0..100 {
                objects[i].centre = random_centre(rng, objects[i].radius);
                if objects[..i].iter().all(|o| apart(o, &objects[i])) {
                    placed = true;
                    break;
                }
            }
            if !placed {
                continue 'attempt;
            }
        }
        return;
    }
    // Always feasible: the 2x2 grid of quarter centres (radius <= 0.22 fits each quadrant).
    const GRID: [(f64, f64); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    for (o, &c) in objects.iter_mut().zip(GRID.iter()) {
        o.centre = c;
    }
}

/// Settings of the `shapes` dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesConfig {
    /// Side of the rendered square images in pixels (>= 16; >= 48 for every object's centre
    /// pixel to be fully covered).
    pub resolution: u32,
    /// Seed of the whole (infinite) dataset.
    pub seed: u64,
    /// Blend edge pixels by coverage.
    pub anti_alias: bool,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        ShapesConfig {
            resolution: 64,
            seed: 0,
            anti_alias: true,
        }
    }
}

/// The procedural `shapes` dataset (infinite).
#[derive(Clone, Debug)]
pub struct Shapes {
    config: ShapesConfig,
}

impl Shapes {
    /// The dataset with these settings.
    pub fn new(config: ShapesConfig) -> Result<Self, DataError> {
        // Above the image side limit, drawing one example would stall allocating it.
        let max = crate::image::MAX_IMAGE_SIDE;
        if !(16..=max).contains(&config.resolution) {
            return Err(DataError::Spec {
                spec: format!("shapes resolution {}", config.resolution),
                message: format!("the resolution must be 16 to {max} pixels"),
            });
        }
        Ok(Shapes { config })
    }

    /// Its settings.
    pub fn config(&self) -> &ShapesConfig {
        &self.config
    }

    /// The scene of example `index`.
    pub fn scene(&self, index: usize) -> Scene {
        let mut rng = SplitMix64::new(hash_u64s(&[self.config.seed, index as u64]));
        Scene::sample(&mut rng)
    }
}

impl Dataset for Shapes {
    fn name(&self) -> String {
        format!(
            "shapes(resolution {}, seed {})",
            self.config.resolution, self.config.seed
        )
    }

    fn len(&self) -> Option<usize> {
        None
    }

    fn id(&self, index: usize) -> Result<String, DataError> {
        Ok(format!("shapes/{index}"))
    }

    fn get(&self, index: usize) -> Result<Example, DataError> {
        let scene = self.scene(index);
        Ok(Example {
            id: self.id(index)?,
            image: scene.render(self.config.resolution, self.config.anti_alias),
            caption: scene.caption(),
        })
    }
}
