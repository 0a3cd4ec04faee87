//! Embedding the operators in your own dataflow: the Kafka source reads the
//! producer's station statuses, your own differential computation (here, a
//! city-wide total of bikes) runs next to this crate's per-postcode
//! fragment, and the Kafka sink writes the per-postcode counts.
//!
//! ```sh
//! cargo run --example velib_producer -- --brokers 127.0.0.1:9092 &
//! cargo run --example embed_city_totals -- --brokers 127.0.0.1:9092
//! ```
//!
//! See `docs/embedding.md` for what each piece does.

mod common;

use clap::Parser;
use differential_dataflow::VecCollection;
use std::sync::Arc;
use std::time::Duration;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;
use velib_dataflow::aggregator::table_directory;
use velib_dataflow::counts::PostcodeTotals;
use velib_dataflow::dataflow::{postcode_counts, Epoch};
use velib_dataflow::kafka::sink::{KafkaSink, SinkConfig, SinkHandle};
use velib_dataflow::kafka::source::{
    written_as_far_as_read, KafkaSource, SourceConfig, SourceHandle, Sources,
};
use velib_dataflow::kafka::upsert::Upsert;
use velib_dataflow::postcode::{Postcode, PostcodeTable};
use velib_dataflow::station_records::StationStatusDecoder;

/// Per-postcode counts to Kafka, and a city-wide total printed per epoch.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", value_name = "HOST:PORT")]
    brokers: String,
    /// Topic of station statuses, as velib_producer writes them.
    #[arg(long, default_value = "velib-projet")]
    input_topic: String,
    /// Topic of per-postcode counts (created, compacted, when missing).
    #[arg(long, default_value = "city-totals-postcodes")]
    output_topic: String,
}

fn main() -> Result<(), String> {
    common::init_logging();
    let args = Args::parse();
    let kafka = velib_dataflow::kafka::KafkaConfig::new(args.brokers);
    // The sink writes to an existing topic: compacted, so that it always
    // holds the current counts.
    velib_dataflow::kafka::topics::ensure_topics(
        &kafka,
        &[velib_dataflow::kafka::topics::TopicSpec::new(&args.output_topic, 3).compacted()],
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    let sources = SourceHandle::default();
    let sink = SinkHandle::default();
    let stopper = sources.clone();
    common::on_ctrl_c("stopping", move || stopper.stop());
    timely::execute(timely::Config::process(2), move |worker| {
        let finished = ProbeHandle::new();
        // How far the source has read: once stopped, done when `finished`
        // gets there.
        let read = ProbeHandle::new();
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<Epoch, _, _>(|scope| {
            // The source: one keyed upsert per station record, in epochs.
            // Built into `inputs`, it reports to the sink by construction.
            let mut inputs = Sources::new(scope, &sources).finished(&finished);
            let statuses = KafkaSource::new(
                SourceConfig::new(kafka.clone(), [args.input_topic.clone()]),
                StationStatusDecoder,
            )
            .build(&mut inputs)
            .upsert();

            // Your own computation: the city-wide total, per epoch.
            statuses
                .clone()
                .map(|s| ((), i64::from(s.bikes_available)))
                .reduce(|_key, bikes, total| {
                    let sum: i64 = bikes.iter().map(|(b, diff)| **b * (*diff as i64)).sum();
                    total.push((sum, 1));
                })
                .inspect(|(((), total), epoch, diff)| {
                    if *diff > 0 {
                        println!("epoch {epoch}: {total} bikes in the city");
                    }
                })
                .probe_with(&finished);

            // This crate's fragment, and the sink.
            let directory = table_directory(&statuses, Arc::new(PostcodeTable::velib()));
            let counts: VecCollection<'_, Epoch, (Postcode, PostcodeTotals)> =
                postcode_counts(statuses, directory);
            counts
                .kafka_sink(
                    // Where each input partition stood, for the progress record.
                    inputs.progress().probe_with(&read),
                    SinkConfig::new(
                        kafka.clone(),
                        args.output_topic.clone(),
                        "embed-city-totals",
                    ),
                    velib_dataflow::output::PostcodeRecordEncoder::default(),
                    sink.clone(),
                )
                .probe_with(&finished);
        });
        while !finished.done() {
            if sources.is_stopped() && written_as_far_as_read(&finished, &read) {
                worker.drop_dataflow(dataflow);
                break;
            }
            worker.step_or_park(Some(Duration::from_millis(200)));
            // A sink that cannot write says why; stop reading then.
            if let Some(error) = sink.error() {
                if !sources.is_stopped() {
                    tracing::error!("stopping: {error}");
                    sources.stop();
                }
            }
        }
    })
    .map_err(|e| e.to_string())?
    .join()
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}
