//! `smallcap eval`: the COCO caption metrics of a results file against caption annotations,
//! computed by `smallcap-metrics` exactly as pycocoevalcap does (METEOR by its native port of
//! METEOR 1.5, or by the toolkit's jar with `--meteor-jar`). Like pycocoevalcap it scores English:
//! the PTB tokenisation and METEOR's synonyms and stemmer follow English rules whatever the
//! captions' language (an XGLM SmallCap's captions in other languages need another scorer).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use smallcap_metrics::{evaluate, EvalOptions, Metric};

#[derive(Args)]
pub struct EvalArgs {
    /// COCO caption annotations: `{"images": [...], "annotations": [{"image_id", "caption"}...]}`.
    #[arg(long)]
    gold: PathBuf,
    /// COCO results: `[{"image_id", "caption"}...]`; the images present here are evaluated.
    #[arg(long)]
    pred: PathBuf,
    /// Print the scores as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write every image's scores to this file (JSON).
    #[arg(long)]
    per_image: Option<PathBuf>,
    /// Skip SPICE (it needs Java and the Stanford CoreNLP 3.6.0 models).
    #[arg(long)]
    no_spice: bool,
    /// Skip METEOR (it needs pycocoevalcap's METEOR data files).
    #[arg(long)]
    no_meteor: bool,
    /// Compute METEOR with pycocoevalcap's meteor-1.5.jar (needs Java) instead of the native
    /// port, which gives the same scores; for cross-checking.
    #[arg(long, conflicts_with = "no_meteor")]
    meteor_jar: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mut opts = EvalOptions {
        meteor_jar: args.meteor_jar,
        ..EvalOptions::default()
    };
    opts.metrics.retain(|m| {
        !(args.no_spice && *m == Metric::Spice || args.no_meteor && *m == Metric::Meteor)
    });
    let report = evaluate(&args.gold, &args.pred, &opts)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if let Some(path) = &args.per_image {
        report.write_per_image(path)?;
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}
