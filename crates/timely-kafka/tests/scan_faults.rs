//! Reading a topic's ends while its partitions' leaders are not yet
//! serving, on librdkafka's mock cluster (fault injection only: the
//! reading itself is tested on Apache Kafka by the other tests).

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;
use timely_kafka::scan::watermarks;
use timely_kafka::KafkaConfig;

#[test]
fn a_partition_whose_leader_is_not_serving_yet_is_asked_again() {
    let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
    mock.create_topic("fresh", 2, 1).unwrap();
    let kafka = KafkaConfig::new(mock.bootstrap_servers());
    // What a just-created topic's broker answers for a moment.
    mock.request_errors(
        RDKafkaApiKey::ListOffsets,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    let ends = watermarks(&kafka, "fresh", Duration::from_secs(10)).expect("asked again");
    assert_eq!(ends, [(0, 0), (0, 0)]);
}

#[test]
fn a_leader_that_never_serves_is_an_error_naming_the_partition() {
    let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
    mock.create_topic("stuck", 1, 1).unwrap();
    let kafka = KafkaConfig::new(mock.bootstrap_servers());
    let errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 1000];
    mock.request_errors(RDKafkaApiKey::ListOffsets, &errors);
    let error = watermarks(&kafka, "stuck", Duration::from_secs(2)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("reading the ends of stuck[0]"),
        "{error}"
    );
}
