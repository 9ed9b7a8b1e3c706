"""Inner parsing, flows, pcap I/O, pipeline, sinks."""
