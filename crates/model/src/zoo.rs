//! The paper's model family (Table 1) counted from the models this crate builds.

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::unet::{UNet, UNetConfig};

/// The paper's width against which costs are normalised (SD 1.5's 320 filters).
pub const REFERENCE_WIDTH: usize = 320;

/// Latent side of the paper's models (512x512 images, f=8 autoencoder).
pub const PAPER_LATENT: usize = 64;
/// Text tokens of the paper's models.
pub const PAPER_CONTEXT: usize = 77;

/// One column of the paper's Table 1, as printed.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PaperEntry {
    /// Base filters.
    pub filters: usize,
    /// Parameters as printed ("39M" ... "5B").
    pub params: &'static str,
    /// GFLOPS as printed.
    pub gflops: f64,
    /// Normalised cost as printed.
    pub normalized_cost: f64,
    /// FID as printed (COCO 2014 val, 50 DDIM steps, CFG 7.5).
    pub fid: f64,
    /// CLIP score as printed.
    pub clip: f64,
}

/// Table 1 of the paper, verbatim.
pub const PAPER_TABLE1: [PaperEntry; 11] = [
    entry(64, "39M", 25.3, 0.07, 25.30, 0.305),
    entry(96, "83M", 102.7, 0.13, 24.30, 0.308),
    entry(128, "145M", 161.5, 0.20, 24.18, 0.310),
    entry(160, "223M", 233.5, 0.30, 23.76, 0.310),
    entry(192, "318M", 318.5, 0.40, 22.83, 0.311),
    entry(224, "430M", 416.6, 0.53, 22.35, 0.312),
    entry(256, "558M", 527.8, 0.67, 22.15, 0.312),
    entry(288, "704M", 652.0, 0.83, 21.82, 0.312),
    entry(320, "866M", 789.3, 1.00, 21.55, 0.312),
    entry(512, "2B", 1887.5, 2.39, 20.98, 0.312),
    entry(768, "5B", 4082.6, 5.17, 20.14, 0.314),
];

const fn entry(
    filters: usize,
    params: &'static str,
    gflops: f64,
    normalized_cost: f64,
    fid: f64,
    clip: f64,
) -> PaperEntry {
    PaperEntry {
        filters,
        params,
        gflops,
        normalized_cost,
        fid,
        clip,
    }
}

/// The paper's figures for width `filters`, if it is in Table 1.
pub fn paper_entry(filters: usize) -> Option<PaperEntry> {
    PAPER_TABLE1.iter().copied().find(|e| e.filters == filters)
}

/// One width of the family as this toolkit builds it.
#[derive(Clone, Debug, Serialize)]
pub struct ZooRow {
    /// Base filters.
    pub width: usize,
    /// Exact parameter count of the built model.
    pub params: usize,
    /// GFLOPs of one forward (batch 1, no CFG) at the chosen latent and context size.
    pub gflops: f64,
    /// GFLOPs relative to the 320-filter model at the same sizes.
    pub normalized_cost: f64,
    /// The paper's printed figures, where the width is in Table 1.
    pub paper: Option<PaperEntry>,
    /// Relative difference of our GFLOPs from the paper's printed value (only at the paper's
    /// sizes: 64x64 latents, 77 tokens).
    pub gflops_vs_paper: Option<f64>,
    /// Where the paper's figures disagree with themselves.
    pub note: Option<String>,
}

/// Counts the family at `widths` for `latent`x`latent` latents and `context` text tokens.
/// Models are built with lazily initialised parameters, so even 5B parameters cost no memory.
pub fn family(widths: &[usize], latent: usize, context: usize, device: &Device) -> Vec<ZooRow> {
    let gflops_of = |c: usize| {
        UNet::new(&UNetConfig::paper(c), device)
            .cost(latent, latent, context)
            .gflops()
    };
    let reference = gflops_of(REFERENCE_WIDTH);
    widths
        .iter()
        .map(|&width| {
            let model = UNet::new(&UNetConfig::paper(width), device);
            let gflops = model.cost(latent, latent, context).gflops();
            let paper = paper_entry(width);
            let note = paper.and_then(|p| {
                let implied = p.normalized_cost * paper_entry(REFERENCE_WIDTH)?.gflops;
                let printed_ratio = p.gflops / paper_entry(REFERENCE_WIDTH)?.gflops;
                // A printed GFLOPS that disagrees with the printed normalised cost by more than
                // rounding of the latter (two decimals) is a typo in the table.
                ((printed_ratio - p.normalized_cost).abs() > 0.01).then(|| {
                    format!(
                        "paper typo: printed {:.1} GFLOPS contradicts its normalised cost {:.2} (implies ~{:.1})",
                        p.gflops, p.normalized_cost, implied
                    )
                })
            });
            ZooRow {
                width,
                params: model.num_params(),
                gflops,
                normalized_cost: gflops / reference,
                paper,
                gflops_vs_paper: paper
                    .filter(|_| latent == PAPER_LATENT && context == PAPER_CONTEXT)
                    .map(|p| gflops / p.gflops - 1.0),
                note,
            }
        })
        .collect()
}
