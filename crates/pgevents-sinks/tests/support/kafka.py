"""Reads and prepares Kafka topics for the pgevents tests, with a client that is not
pgevents' own: confluent-kafka (its wheel carries a current librdkafka).

    kafka.py create BROKERS TOPIC PARTITIONS   create a topic (error if it exists)
    kafka.py delete BROKERS TOPIC              delete a topic
    kafka.py consume BROKERS TOPIC             every message (read until the topic is quiet
                                               for IDLE seconds), one JSON line each, in
                                               (partition, offset) order:
    {"partition": 0, "offset": 0, "key": "..." or null, "headers": {"name": "value"}, "value": "<hex>"}

Exits 1 with the reason on standard error when the broker does not answer in time.
"""

import binascii
import json
import sys

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 15.0
# Seconds without a new message after which a topic counts as read to its end.
IDLE = 1.0


def admin(brokers):
    return AdminClient({"bootstrap.servers": brokers})


def create(brokers, topic, partitions):
    client = admin(brokers)  # kept alive until the answer arrives
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=int(partitions), replication_factor=1)],
        operation_timeout=TIMEOUT, request_timeout=TIMEOUT)
    futures[topic].result(timeout=TIMEOUT)


def delete(brokers, topic):
    client = admin(brokers)  # kept alive until the answer arrives
    futures = client.delete_topics([topic], operation_timeout=TIMEOUT, request_timeout=TIMEOUT)
    futures[topic].result(timeout=TIMEOUT)


def consume(brokers, topic):
    # Read until the topic stays quiet for IDLE seconds: the high watermark tansu reports
    # (ListOffsets) is the last batch's first offset + 1, not the last record's, so it
    # cannot tell when everything was read.
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "pgevents-test-reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    metadata = consumer.list_topics(topic, timeout=TIMEOUT).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    partitions = [TopicPartition(topic, p, 0) for p in sorted(metadata.partitions)]
    # The watermarks do tell whether there is anything at all: then the first message is
    # waited for as long as the broker may take to answer.
    some = any(high > low for low, high in
               (consumer.get_watermark_offsets(p, timeout=TIMEOUT) for p in partitions))
    consumer.assign(partitions)
    messages = []
    while True:
        message = consumer.poll(IDLE if messages or not some else TIMEOUT)
        if message is None:
            break
        if message.error() is not None:
            raise KafkaException(message.error())
        messages.append(message_json(message))
    consumer.close()
    messages.sort(key=lambda m: (m["partition"], m["offset"]))
    for m in messages:
        print(json.dumps(m))


def message_json(message):
    key = message.key()
    return {
        "partition": message.partition(),
        "offset": message.offset(),
        "key": None if key is None else key.decode("utf-8"),
        "headers": {k: (None if v is None else v.decode("utf-8"))
                    for k, v in (message.headers() or [])},
        "value": binascii.hexlify(message.value() or b"").decode("ascii"),
    }


def main(argv):
    commands = {"create": create, "delete": delete, "consume": consume}
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[1]](*argv[2:])
    except Exception as error:  # the Rust test shows this text
        print(f"kafka.py {' '.join(argv[1:])}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
