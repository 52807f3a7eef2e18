//! Paired comparisons of settings from the features a sweep kept (see
//! [`crate::bootstrap::paired_difference`]). Two settings pair when both kept the features of
//! the same seeds: their row `i` then shares prompt `i` and initial noise `i`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::analysis::Setting;
use crate::bootstrap::{FidResampler, PairedDifference, paired_difference};
use crate::cell::{Cell, CellKey};
use crate::store::{FeatureRows, Store, StoreError};

/// Replicates where the cells recorded none (their own intervals' count is used otherwise).
const DEFAULT_REPLICATES: u32 = 200;

/// The kept features of a sweep's cells and of its reference set.
pub struct Pairing {
    reference: FeatureRows,
    cells: HashMap<CellKey, FeatureRows>,
    /// Resamplers by cell and the rows they use.
    resamplers: Mutex<HashMap<(CellKey, usize), Arc<FidResampler>>>,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pairing({} cells)", self.cells.len())
    }
}

impl Pairing {
    /// The kept features of `cells` in `store`; `None` when the store kept no reference or no
    /// cell's features (stores written before features were kept, or too large to keep).
    pub fn from_store(store: &Store, cells: &[Cell]) -> Result<Option<Arc<Self>>, StoreError> {
        let Some(reference) = store.reference_features()? else {
            return Ok(None);
        };
        Self::with_reference(store, reference, cells)
    }

    /// The kept features of `cells` in `store`, against `reference` (a downstream variant's
    /// own reference set); `None` when no cell kept its features.
    pub fn with_reference(
        store: &Store,
        reference: FeatureRows,
        cells: &[Cell],
    ) -> Result<Option<Arc<Self>>, StoreError> {
        let mut kept = HashMap::new();
        for cell in cells {
            if let Some(rows) = store.cell_features(&cell.key())? {
                kept.insert(cell.key(), rows);
            }
        }
        Ok(Self::new(reference, kept))
    }

    /// From features in memory; `None` without any cell's.
    pub fn new(reference: FeatureRows, cells: HashMap<CellKey, FeatureRows>) -> Option<Arc<Self>> {
        (!cells.is_empty()).then(|| {
            Arc::new(Self {
                reference,
                cells,
                resamplers: Mutex::new(HashMap::new()),
            })
        })
    }

    /// The reference set's rows.
    pub fn reference(&self) -> &FeatureRows {
        &self.reference
    }

    /// The rows one cell kept, if it kept any.
    pub fn cell_rows(&self, key: &CellKey) -> Option<&FeatureRows> {
        self.cells.get(key)
    }

    /// `FID(other) - FID(favoured)` with its paired interval, where both settings kept the
    /// features of the same seeds.
    pub fn difference(&self, favoured: &Setting, other: &Setting) -> Option<PairedDifference> {
        let seeds = |s: &Setting| s.keys.iter().map(|k| k.seed).collect::<Vec<_>>();
        if favoured.keys.is_empty() || seeds(favoured) != seeds(other) {
            return None;
        }
        // Row i of every cell shares prompt i and noise seed: cells measured again with more
        // samples (adaptive sampling) pair with the others over their common first rows.
        let keys = favoured.keys.iter().chain(&other.keys);
        let rows = keys
            .map(|k| self.cells.get(k).map(|r| r.rows))
            .min()
            .flatten()?;
        let mut pairs = Vec::new();
        for (f, o) in favoured.keys.iter().zip(&other.keys) {
            pairs.push((self.resampler(f, rows)?, self.resampler(o, rows)?));
        }
        let borrowed: Vec<(&FidResampler, &FidResampler)> = pairs
            .iter()
            .map(|(f, o)| (f.as_ref(), o.as_ref()))
            .collect();
        let replicates = [favoured, other]
            .iter()
            .filter_map(|s| s.fid_ci.map(|c| c.replicates))
            .max()
            .filter(|&r| r >= 2)
            .unwrap_or(DEFAULT_REPLICATES);
        let seed = favoured.keys[0].seed_for("paired") ^ other.keys[0].seed_for("paired");
        paired_difference(&borrowed, replicates as usize, seed).ok()
    }

    /// The resampler of one cell's first `rows` kept features against the reference (built
    /// once).
    fn resampler(&self, key: &CellKey, rows: usize) -> Option<Arc<FidResampler>> {
        let mut cache = self.resamplers.lock().unwrap_or_else(|p| p.into_inner());
        let cache_key = (key.clone(), rows);
        if let Some(r) = cache.get(&cache_key) {
            return Some(r.clone());
        }
        let kept = self.cells.get(key)?;
        if kept.dim != self.reference.dim || kept.rows < rows {
            return None;
        }
        let first = &kept.data[..rows * kept.dim];
        let r = Arc::new(FidResampler::new(first, &self.reference.data, kept.dim).ok()?);
        cache.insert(cache_key, r.clone());
        Some(r)
    }
}

/// A setting's link to the kept features (equal and printed alike whether present or not, so
/// settings compare by their measurements).
#[derive(Clone, Default)]
pub struct PairingHandle(pub Option<Arc<Pairing>>);

impl PartialEq for PairingHandle {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for PairingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairingHandle")
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::analysis::tests::cell;
    use crate::analysis::{optimal_cfg, settings_paired, winners};
    use crate::bootstrap::fid_interval;
    use crate::bootstrap::tests::gaussian;
    use crate::findings::{Difference, Verdict};

    const D: usize = 6;

    /// Two widths whose samples share prompts and noise; the larger is worse by a shift small
    /// enough that their marginal intervals overlap.
    fn two_widths() -> (Vec<Cell>, FeatureRows, HashMap<CellKey, FeatureRows>) {
        let mut rng = StdRng::seed_from_u64(21);
        let reference = gaussian(96, D, 0.0, 7, &mut rng);
        let base = gaussian(48, D, 0.0, 7, &mut rng);
        let mut cells = Vec::new();
        let mut kept = HashMap::new();
        for (width, shift) in [(32u32, 0.0f32), (64, 0.4)] {
            let jitter = gaussian(48, D, 0.0, 8, &mut rng);
            let rows: Vec<f32> = base
                .iter()
                .zip(&jitter)
                .map(|(x, j)| x + 0.15 * j + shift)
                .collect();
            let fid = FidResampler::new(&rows, &reference, D)
                .unwrap()
                .full_fid()
                .unwrap();
            let mut c = cell(width, "ddim", 4, 1.0, fid);
            c.fid_ci = Some(fid_interval(&rows, &reference, D, fid, 200, width as u64).unwrap());
            kept.insert(c.key(), FeatureRows::new(rows, D).unwrap());
            cells.push(c);
        }
        (cells, FeatureRows::new(reference, D).unwrap(), kept)
    }

    #[test]
    fn paired_settings_decide_what_overlapping_intervals_cannot() {
        let (cells, reference, kept) = two_widths();
        let marginal = settings_paired(&cells, None);
        let gap = Difference::fid_gap(&marginal[0], &marginal[1]);
        assert!(!gap.paired);
        let i = gap.interval.unwrap();
        assert!(i.low < 0.0 && 0.0 < i.high, "marginal {i:?}");

        let pairing = Pairing::new(reference, kept.clone());
        let paired = settings_paired(&cells, pairing);
        let d = Difference::fid_gap(&paired[0], &paired[1]);
        assert!(d.paired);
        assert!((d.value - gap.value).abs() < 1e-9);
        assert!(d.interval.unwrap().low > 0.0, "paired {:?}", d.interval);
        assert!(d.text().contains("paired"), "{}", d.text());

        // The budget table's margin at the budget both widths fit: decided only when paired.
        let margin = |settings: &[Setting]| {
            let top = winners(&optimal_cfg(settings), None)
                .pop()
                .expect("a budget");
            assert_eq!(
                (top.best.width, top.runner_up.as_ref().unwrap().width),
                (32, 64)
            );
            top.margin().expect("a runner-up")
        };
        assert_eq!(margin(&marginal).verdict(), Verdict::Inconclusive);
        let m = margin(&paired);
        assert!(m.paired && m.verdict() == Verdict::Holds, "{m:?}");

        // A side measured again with more samples pairs over the rows both kept.
        let (cells, reference, mut kept) = two_widths();
        let longer = kept.get_mut(&cells[1].key()).unwrap();
        let extra = gaussian(16, D, 3.0, 9, &mut StdRng::seed_from_u64(5));
        *longer = FeatureRows::new([longer.data.clone(), extra].concat(), D).unwrap();
        let mixed = settings_paired(&cells, Pairing::new(reference, kept));
        let m = Difference::fid_gap(&mixed[0], &mixed[1]);
        assert!(m.paired);
        assert_eq!(m.interval, d.interval, "{m:?} vs {d:?}");

        // A side without kept features falls back to the marginal range.
        let (cells, reference, mut kept) = two_widths();
        kept.remove(&cells[1].key());
        let partial = settings_paired(&cells, Pairing::new(reference, kept));
        assert!(!Difference::fid_gap(&partial[0], &partial[1]).paired);
    }

    /// Both sides measured again with more samples, where the extra rows reverse the order the
    /// headline FIDs gave: the paired order puts the better-informed winner first.
    #[test]
    fn more_samples_can_reverse_the_headline_order() {
        let (cells, reference, mut kept) = two_widths();
        let mut rng = StdRng::seed_from_u64(8);
        for (cell, shift) in cells.iter().zip([0.9f32, 0.0]) {
            let rows = kept.get_mut(&cell.key()).unwrap();
            let extra = gaussian(400, D, shift, 7, &mut rng);
            *rows = FeatureRows::new([rows.data.clone(), extra].concat(), D).unwrap();
        }
        let paired = settings_paired(&cells, Pairing::new(reference, kept));
        assert!(paired[0].fid < paired[1].fid, "headlines: 32 filters ahead");
        let (best, runner_up) =
            crate::analysis::paired_order(paired[0].clone(), Some(paired[1].clone()));
        assert_eq!((best.width, runner_up.unwrap().width), (64, 32));
        let (best, _) = crate::analysis::paired_order(paired[0].clone(), None);
        assert_eq!(best.width, 32);
    }
}
