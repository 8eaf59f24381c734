"""Wire formats: what devices send (codecs: nbiot, sigfox, lorawan) and what travels on the bus (envelopes: reading).

Import the module that owns a name (`from pulsestack.wire.reading import Reading`): this package re-exports nothing.
"""
