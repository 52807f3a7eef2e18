//! The paper's family (Table 1) as built: exact parameter counts against diffusers
//! (fixtures/unet/family_counts.json), multiply-adds against an independent count made with
//! hooks on diffusers' forward, and GFLOPs against the paper.

use burn::module::Module;
use burn::tensor::Device;
use ldmscale_model::zoo::{family, paper_entry};
use ldmscale_model::{UNet, UNetConfig};
use ldmscale_testkit::{fixture_dir, read_json};
use serde_json::Value;

fn counts() -> Value {
    read_json(fixture_dir("unet/family_counts.json"))
}

const WIDTHS: [usize; 11] = [64, 96, 128, 160, 192, 224, 256, 288, 320, 512, 768];

#[test]
fn parameter_counts_equal_diffusers() {
    let device = Device::flex();
    let counts = counts();
    for c in WIDTHS {
        let ours = UNet::new(&UNetConfig::paper(c), &device).num_params();
        let theirs = counts[c.to_string()]["params"].as_u64().unwrap() as usize;
        assert_eq!(ours, theirs, "width {c}");
    }
    for (name, config) in [("sd15", UNetConfig::sd15()), ("sd21", UNetConfig::sd21())] {
        let ours = UNet::new(&config, &device).num_params();
        let theirs = counts[name]["params"].as_u64().unwrap() as usize;
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn paper_config_matches_the_diffusers_config_of_the_fixture() {
    let counts = counts();
    for c in WIDTHS {
        let theirs: UNetConfig =
            serde_json::from_value(counts[c.to_string()]["config"].clone()).unwrap();
        let ours = UNetConfig::paper(c);
        for level in 0..4 {
            assert_eq!(
                ours.level(level),
                theirs.level(level),
                "width {c} level {level}"
            );
        }
        assert_eq!(ours.block_out_channels, theirs.block_out_channels);
        assert_eq!(ours.down_block_types, theirs.down_block_types);
        assert_eq!(ours.up_block_types, theirs.up_block_types);
        assert_eq!(ours.use_linear_projection, theirs.use_linear_projection);
    }
}

#[test]
fn multiply_adds_equal_a_hook_count_on_diffusers() {
    let device = Device::flex();
    let counts = counts();
    for c in WIDTHS {
        let cost = UNet::new(&UNetConfig::paper(c), &device).cost(64, 64, 77);
        let entry = &counts[c.to_string()];
        let conv = entry["macs_conv"].as_u64().unwrap();
        let total = entry["macs_total"].as_u64().unwrap();
        assert_eq!(cost.conv_macs, conv, "width {c}: conv multiply-adds");
        // The hook count sees the timestep MLP and the attention products too; ours must agree
        // to within the few small per-sample matmuls either side may attribute differently.
        let rel = (cost.macs() as f64 / total as f64 - 1.0).abs();
        assert!(
            rel < 1e-4,
            "width {c}: {} vs {} multiply-adds",
            cost.macs(),
            total
        );
    }
}

#[test]
fn gflops_within_one_percent_of_the_paper() {
    let rows = family(&WIDTHS, 64, 77, &Device::flex());
    for row in &rows {
        let paper = paper_entry(row.width).unwrap();
        let rel = row.gflops / paper.gflops - 1.0;
        if row.width == 64 {
            // Table 1's 25.3 is a typo (its own normalised cost says ~56): flagged, not matched.
            assert!(
                row.note.as_deref().unwrap_or("").contains("typo"),
                "{row:?}"
            );
            assert!((row.gflops - 56.6).abs() < 1.0, "{row:?}");
        } else {
            assert!(
                rel.abs() < 0.01,
                "width {}: {:.1} vs paper {:.1}",
                row.width,
                row.gflops,
                paper.gflops
            );
            assert!(row.note.is_none(), "{row:?}");
            assert!(
                (row.normalized_cost - paper.normalized_cost).abs() < 0.011,
                "{row:?}"
            );
        }
    }
}
