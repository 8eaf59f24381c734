"""NB-IoT ingest: authenticated UDP datagrams in, RAW messages out, acks after the PubAck."""
