/**
 * AutoNAT v1 whose dial-back is always a fresh connection (issue 16).
 *
 * @libp2p/autonat 3's server answers "dial me back at X" with `connectionManager.openConnection(X)`
 * and closes the connection it gets. When we already hold a connection to the asking peer whose
 * remote address is X (we dialled its listen address), libp2p returns that existing connection:
 * the server reports X reachable without having dialled it, and then closes our own connection
 * to the peer, its relay reservation and every stream on it. In the NAT lab every home peer lost
 * its connections to the public peers this way a second after making them (the public peers ask
 * each new connection to verify their listen address), which flapped relay slots ("the HOP
 * stream closes 20-50 ms after it opens", test/nat.test.ts) and the hole-punch observations.
 *
 * The fix: the service gets a connection manager whose openConnection of a single multiaddr (the
 * dial-back; its random walk dials lists) is forced to open a new connection. Hand-written
 * around the maintained library because it offers no option for it.
 */
import { autoNAT, type AutoNATComponents, type AutoNATServiceInit } from '@libp2p/autonat';
import { withOverrides } from './override.js';

export function freshDialBackAutoNAT(init: AutoNATServiceInit = {}): (components: AutoNATComponents) => unknown {
  const make = autoNAT(init);
  return (components) => {
    const cm = components.connectionManager;
    const connectionManager = withOverrides(cm, {
      openConnection: (peer, options = {}) =>
        cm.openConnection(peer, Array.isArray(peer) ? options : { ...options, force: true }),
    });
    return make(withOverrides(components, { connectionManager }));
  };
}
