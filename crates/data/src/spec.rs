//! Naming a dataset in a config: a short string (`shapes`, `fashion-mnist:test`,
//! `folder:/data/pets`, `coco:/coco/captions_val2014.json:/coco/val2014`,
//! `wds:/data/shard-{000..009}.tar`) or, in TOML/JSON, a table with a `kind` field. Both
//! deserialise into [`DatasetSpec`]; it serialises back to the string when that round-trips.
//!
//! String grammar: `KIND[:ARG...][:KEY=VALUE...]`, split at `:`. Paths that contain `:` (or a
//! segment that looks like `word=...`) need the table form.
//!
//! | string | table |
//! |---|---|
//! | `shapes[:resolution=64][:seed=0][:anti_alias=true]` | `{kind = "shapes", resolution = 64, seed = 0, anti_alias = true}` |
//! | `fashion-mnist[:train\|test][:captions=fixed\|varied]` | `{kind = "fashion-mnist", part = "test", captions = "varied"}` |
//! | `mnist[:train\|test][:captions=fixed\|varied]` | `{kind = "mnist", ...}` |
//! | `emoji[:exclude=FILE,FILE...]` | `{kind = "emoji", exclude = ["1f638.png"]}` |
//! | `folder:DIR` | `{kind = "folder", path = "DIR"}` |
//! | `coco:CAPTIONS_JSON:IMAGE_DIR[:captions=first\|every]` | `{kind = "coco", annotations = "...", images = "...", captions = "every"}` |
//! | `wds:PATTERN` | `{kind = "wds", shards = "/data/shard-{000..009}.tar"}` |

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::folder::{Coco, CocoCaptions, ImageFolder};
use crate::mnist::{CaptionStyle, Emoji, GrayClasses, Part, assets_dir};
use crate::shapes::{Shapes, ShapesConfig};
use crate::webdataset::WebDataset;

/// Which dataset, with its options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SpecRepr", into = "SpecRepr")]
pub enum DatasetSpec {
    /// The procedural shapes dataset (no files needed).
    Shapes(ShapesConfig),
    /// Fashion-MNIST from the `fashion-mnist` asset.
    FashionMnist {
        /// Train or test file.
        part: Part,
        /// Caption wording.
        captions: CaptionStyle,
    },
    /// MNIST from the `mnist` asset.
    Mnist {
        /// Train or test file.
        part: Part,
        /// Caption wording.
        captions: CaptionStyle,
    },
    /// Google emoji from the `emoji` asset.
    Emoji {
        /// Image files left out (DreamBooth subjects the captions must never name).
        exclude: Vec<String>,
    },
    /// A folder of images with `captions.jsonl` or `.txt` sidecars.
    Folder {
        /// The folder.
        path: PathBuf,
    },
    /// A COCO captions file over an image folder.
    Coco {
        /// The captions JSON (`captions_val2014.json` layout).
        annotations: PathBuf,
        /// The folder holding the images it names.
        images: PathBuf,
        /// One example per image (first caption) or per caption.
        captions: CocoCaptions,
    },
    /// WebDataset tar shards.
    Wds {
        /// Shard path pattern with `{000..009}` / `{a,b}` braces.
        shards: String,
    },
}

/// The serde form: a string, or a table with `kind`.
#[derive(Serialize)]
#[serde(untagged)]
enum SpecRepr {
    Text(String),
    Table(SpecTable),
}

// By hand rather than `untagged`, so a bad table reports its own error (unknown field, missing
// `kind`) instead of "did not match any variant".
impl<'de> Deserialize<'de> for SpecRepr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SpecRepr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a dataset spec string such as \"shapes\" or a table with \"kind\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SpecRepr, E> {
                Ok(SpecRepr::Text(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SpecRepr, A::Error> {
                SpecTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SpecRepr::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn default_resolution() -> u32 {
    ShapesConfig::default().resolution
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum SpecTable {
    Shapes {
        #[serde(default = "default_resolution")]
        resolution: u32,
        #[serde(default)]
        seed: u64,
        #[serde(default = "yes")]
        anti_alias: bool,
    },
    FashionMnist {
        #[serde(default)]
        part: Part,
        #[serde(default)]
        captions: CaptionStyle,
    },
    Mnist {
        #[serde(default)]
        part: Part,
        #[serde(default)]
        captions: CaptionStyle,
    },
    Emoji {
        #[serde(default)]
        exclude: Vec<String>,
    },
    Folder {
        path: PathBuf,
    },
    Coco {
        annotations: PathBuf,
        images: PathBuf,
        #[serde(default)]
        captions: CocoCaptions,
    },
    Wds {
        shards: String,
    },
}

impl TryFrom<SpecRepr> for DatasetSpec {
    type Error = DataError;
    fn try_from(r: SpecRepr) -> Result<Self, DataError> {
        Ok(match r {
            SpecRepr::Text(s) => s.parse()?,
            SpecRepr::Table(t) => match t {
                SpecTable::Shapes {
                    resolution,
                    seed,
                    anti_alias,
                } => DatasetSpec::Shapes(ShapesConfig {
                    resolution,
                    seed,
                    anti_alias,
                }),
                SpecTable::FashionMnist { part, captions } => {
                    DatasetSpec::FashionMnist { part, captions }
                }
                SpecTable::Mnist { part, captions } => DatasetSpec::Mnist { part, captions },
                SpecTable::Emoji { exclude } => DatasetSpec::Emoji { exclude },
                SpecTable::Folder { path } => DatasetSpec::Folder { path },
                SpecTable::Coco {
                    annotations,
                    images,
                    captions,
                } => DatasetSpec::Coco {
                    annotations,
                    images,
                    captions,
                },
                SpecTable::Wds { shards } => DatasetSpec::Wds { shards },
            },
        })
    }
}

impl From<DatasetSpec> for SpecRepr {
    fn from(spec: DatasetSpec) -> Self {
        let text = spec.to_string();
        if text.parse::<DatasetSpec>().ok().as_ref() == Some(&spec) {
            return SpecRepr::Text(text);
        }
        SpecRepr::Table(match spec {
            DatasetSpec::Shapes(c) => SpecTable::Shapes {
                resolution: c.resolution,
                seed: c.seed,
                anti_alias: c.anti_alias,
            },
            DatasetSpec::FashionMnist { part, captions } => {
                SpecTable::FashionMnist { part, captions }
            }
            DatasetSpec::Mnist { part, captions } => SpecTable::Mnist { part, captions },
            DatasetSpec::Emoji { exclude } => SpecTable::Emoji { exclude },
            DatasetSpec::Folder { path } => SpecTable::Folder { path },
            DatasetSpec::Coco {
                annotations,
                images,
                captions,
            } => SpecTable::Coco {
                annotations,
                images,
                captions,
            },
            DatasetSpec::Wds { shards } => SpecTable::Wds { shards },
        })
    }
}

const FORMS: &str = "expected shapes[:resolution=N][:seed=N][:anti_alias=BOOL], \
    fashion-mnist[:train|test][:captions=fixed|varied], mnist[:train|test][:captions=...], emoji[:exclude=FILE,...], \
    folder:DIR, coco:CAPTIONS_JSON:IMAGE_DIR[:captions=first|every], or wds:PATTERN";

/// Whether a `:`-separated segment is a `key=value` option (key of lower-case letters and `_`).
fn as_option(segment: &str) -> Option<(&str, &str)> {
    let (k, v) = segment.split_once('=')?;
    (!k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some((k, v))
}

impl std::str::FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self, DataError> {
        let err = |message: String| DataError::Spec {
            spec: text.to_string(),
            message,
        };
        let mut segments = text.split(':');
        let kind = segments.next().unwrap_or("").trim();
        let mut args = Vec::new();
        let mut options = Vec::new();
        for s in segments {
            match as_option(s) {
                Some(kv) => options.push(kv),
                None => args.push(s),
            }
        }
        let n_args = |n: usize, what: &str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(err(format!(
                    "{kind} takes {what}, found {} argument(s)",
                    args.len()
                )))
            }
        };
        let unknown = |key: &str, known: &str| {
            err(format!("{kind} has no option {key:?} (options: {known})"))
        };
        let bool_value = |key: &str, v: &str| {
            v.parse::<bool>()
                .map_err(|_| err(format!("{key}={v}: expected true or false")))
        };
        let number = |key: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| err(format!("{key}={v}: expected a non-negative integer")))
        };
        Ok(match kind {
            "shapes" => {
                n_args(0, "no positional arguments")?;
                let mut c = ShapesConfig::default();
                for (k, v) in options {
                    match k {
                        "resolution" => {
                            c.resolution = u32::try_from(number(k, v)?)
                                .map_err(|_| err(format!("{k}={v}: too large")))?
                        }
                        "seed" => c.seed = number(k, v)?,
                        "anti_alias" => c.anti_alias = bool_value(k, v)?,
                        _ => return Err(unknown(k, "resolution, seed, anti_alias")),
                    }
                }
                DatasetSpec::Shapes(c)
            }
            "fashion-mnist" | "mnist" => {
                let part = match args.as_slice() {
                    [] | ["train"] => Part::Train,
                    ["test"] => Part::Test,
                    _ => return Err(err(format!("{kind} takes train or test, found {args:?}"))),
                };
                let mut captions = CaptionStyle::Fixed;
                for (k, v) in options {
                    match (k, v) {
                        ("captions", "fixed") => captions = CaptionStyle::Fixed,
                        ("captions", "varied") => captions = CaptionStyle::Varied,
                        ("captions", _) => {
                            return Err(err(format!("captions={v}: expected fixed or varied")));
                        }
                        _ => return Err(unknown(k, "captions")),
                    }
                }
                if kind == "mnist" {
                    DatasetSpec::Mnist { part, captions }
                } else {
                    DatasetSpec::FashionMnist { part, captions }
                }
            }
            "emoji" => {
                n_args(0, "no arguments")?;
                let mut exclude = Vec::new();
                for (k, v) in options {
                    if k != "exclude" {
                        return Err(unknown(k, "exclude"));
                    }
                    exclude.extend(v.split(',').filter(|f| !f.is_empty()).map(String::from));
                }
                DatasetSpec::Emoji { exclude }
            }
            "folder" => {
                n_args(1, "one folder path")?;
                if let Some((k, _)) = options.first() {
                    return Err(unknown(k, "none"));
                }
                DatasetSpec::Folder {
                    path: PathBuf::from(args[0]),
                }
            }
            "coco" => {
                n_args(2, "the captions JSON and the image folder (coco:JSON:DIR)")?;
                let mut captions = CocoCaptions::First;
                for (k, v) in options {
                    match (k, v) {
                        ("captions", "first") => captions = CocoCaptions::First,
                        ("captions", "every") => captions = CocoCaptions::Every,
                        ("captions", _) => {
                            return Err(err(format!("captions={v}: expected first or every")));
                        }
                        _ => return Err(unknown(k, "captions")),
                    }
                }
                DatasetSpec::Coco {
                    annotations: PathBuf::from(args[0]),
                    images: PathBuf::from(args[1]),
                    captions,
                }
            }
            "wds" => {
                n_args(1, "one shard pattern")?;
                if let Some((k, _)) = options.first() {
                    return Err(unknown(k, "none"));
                }
                DatasetSpec::Wds {
                    shards: args[0].to_string(),
                }
            }
            "" => return Err(err(format!("empty; {FORMS}"))),
            other => return Err(err(format!("unknown dataset kind {other:?}; {FORMS}"))),
        })
    }
}

impl std::fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetSpec::Shapes(c) => {
                write!(f, "shapes")?;
                let d = ShapesConfig::default();
                if c.resolution != d.resolution {
                    write!(f, ":resolution={}", c.resolution)?;
                }
                if c.seed != d.seed {
                    write!(f, ":seed={}", c.seed)?;
                }
                if c.anti_alias != d.anti_alias {
                    write!(f, ":anti_alias={}", c.anti_alias)?;
                }
                Ok(())
            }
            DatasetSpec::FashionMnist { part, captions }
            | DatasetSpec::Mnist { part, captions } => {
                let kind = if matches!(self, DatasetSpec::Mnist { .. }) {
                    "mnist"
                } else {
                    "fashion-mnist"
                };
                write!(f, "{kind}")?;
                if *part == Part::Test {
                    write!(f, ":test")?;
                }
                if *captions == CaptionStyle::Varied {
                    write!(f, ":captions=varied")?;
                }
                Ok(())
            }
            DatasetSpec::Emoji { exclude } if exclude.is_empty() => write!(f, "emoji"),
            DatasetSpec::Emoji { exclude } => write!(f, "emoji:exclude={}", exclude.join(",")),
            DatasetSpec::Folder { path } => write!(f, "folder:{}", path.display()),
            DatasetSpec::Coco {
                annotations,
                images,
                captions,
            } => {
                write!(f, "coco:{}:{}", annotations.display(), images.display())?;
                if *captions == CocoCaptions::Every {
                    write!(f, ":captions=every")?;
                }
                Ok(())
            }
            DatasetSpec::Wds { shards } => write!(f, "wds:{shards}"),
        }
    }
}

impl DatasetSpec {
    /// Opens the dataset; asset datasets are looked for under [`assets_dir`].
    pub fn open(&self) -> Result<Box<dyn Dataset>, DataError> {
        self.open_with_assets(&assets_dir())
    }

    /// Opens the dataset, looking for asset datasets under `assets` (the folder holding
    /// `fashion-mnist/`, `mnist/`, `emoji/`).
    pub fn open_with_assets(&self, assets: &Path) -> Result<Box<dyn Dataset>, DataError> {
        Ok(match self {
            DatasetSpec::Shapes(c) => Box::new(Shapes::new(*c)?),
            DatasetSpec::FashionMnist { part, captions } => Box::new(
                GrayClasses::fashion_mnist_in(&assets.join("fashion-mnist"), *part, *captions)?,
            ),
            DatasetSpec::Mnist { part, captions } => Box::new(GrayClasses::mnist_in(
                &assets.join("mnist"),
                *part,
                *captions,
            )?),
            DatasetSpec::Emoji { exclude } => {
                Box::new(Emoji::open_excluding(&assets.join("emoji"), exclude)?)
            }
            DatasetSpec::Folder { path } => Box::new(ImageFolder::open(path)?),
            DatasetSpec::Coco {
                annotations,
                images,
                captions,
            } => Box::new(Coco::open(annotations, images, *captions)?),
            DatasetSpec::Wds { shards } => Box::new(WebDataset::open(shards)?),
        })
    }
}
