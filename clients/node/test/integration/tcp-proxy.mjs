// A loopback TCP proxy in front of a gateway, that a test can make lose replies, reset, and point elsewhere:
// what a load balancer, a NAT or a network does to a client (tests/integration/client/tcp_proxy.py in Python).
import net from "node:net";

export class TcpProxy {
  constructor(upstream) {
    this.retarget(upstream);
    this.connections = 0;
    this.heldBytes = 0;
    this.holding = false;
    this.pairs = new Set();
  }

  /** Starts listening on a free loopback port; `address` is then `127.0.0.1:<port>`. */
  async start() {
    this.server = net.createServer((client) => this.serve(client));
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.address = `127.0.0.1:${this.server.address().port}`;
    return this;
  }

  /** New connections go to `upstream` (`host:port`). */
  retarget(upstream) {
    const at = upstream.lastIndexOf(":");
    this.upstream = { host: upstream.slice(0, at), port: Number(upstream.slice(at + 1)) };
  }

  /** From now on the gateway's bytes are counted in `heldBytes` and dropped instead of reaching the client. */
  holdReplies() {
    this.holding = true;
    this.heldBytes = 0;
  }

  /** Resets every open connection (RST to the client); new ones pass normally. */
  reset() {
    this.holding = false;
    for (const [client, upstream] of this.pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  async close() {
    this.reset();
    await new Promise((resolve) => this.server.close(resolve));
  }

  serve(client) {
    this.connections += 1;
    const upstream = net.connect(this.upstream.port, this.upstream.host);
    const pair = [client, upstream];
    this.pairs.add(pair);
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (this.holding) {
        this.heldBytes += data.length;
      } else {
        client.write(data);
      }
    });
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const side of pair) {
      side.on("error", end);
      side.on("close", end);
    }
  }
}

/** Polls `condition` until true; throws after `withinMs`. */
export async function until(condition, withinMs = 10_000, what = "condition") {
  const deadline = performance.now() + withinMs;
  while (!condition()) {
    if (performance.now() > deadline) {
      throw new Error(`${what} not reached within ${withinMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
