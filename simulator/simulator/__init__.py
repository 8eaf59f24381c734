"""A simulated fleet of meters: NB-IoT over UDP with acks and retransmissions, Sigfox through callbacks."""
