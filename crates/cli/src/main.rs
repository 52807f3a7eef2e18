//! `ldmscale`: train, sample and measure families of latent diffusion models of different sizes,
//! and find which size, sampler, step count and guidance give the best images for a budget.

mod npy;
mod sample;
mod zoo;

use clap::{Parser, Subcommand};

/// Scaling properties of latent diffusion models, as working software.
///
/// Reproduces Mei et al., "Bigger is not Always Better: Scaling Properties of Latent Diffusion
/// Models": a family of Stable-Diffusion-style UNets that differ only in base width, trained
/// from scratch, sampled with DDIM / DDPM / DPM-Solver++ under classifier-free guidance, and
/// compared at equal sampling cost (GFLOPs x steps).
#[derive(Parser, Debug)]
#[command(name = "ldmscale", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the model family: exact parameters, GFLOPs per forward and normalised cost, beside
    /// the paper's Table 1.
    ///
    /// Counts come from the models the toolkit builds (parameters are allocated lazily, so even
    /// the 5B model costs no memory). Example: `ldmscale zoo --latent 32 --widths 64,128 --format csv`.
    Zoo(zoo::ZooArgs),
    /// Sample latents with DDIM / DDPM / DPM-Solver++ and classifier-free guidance.
    ///
    /// Takes text states as .npy (interop with diffusers' encode_prompt) and prints the sampling
    /// cost: evaluations (doubled by CFG) x GFLOPs per evaluation. Example:
    /// `ldmscale sample --unet unet/ --sampler dpmpp-2m --steps 20 --cfg 7.5
    /// --prompt-embeds p.npy --negative-embeds n.npy --output-latents out.npy`.
    Sample(Box<sample::SampleArgs>),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Zoo(args) => zoo::run(args),
        Command::Sample(args) => sample::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
