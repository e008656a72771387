/**
 * The broadcast address of the subnet `host` is on: 127.255.255.255 on loopback, and for any other
 * address the interface's own broadcast (address | ~netmask). Never 255.255.255.255: that would
 * leave the machine.
 */
import { networkInterfaces } from "node:os";

function toInt(ip: string): number {
  return ip.split(".").reduce((n, p) => (n << 8) | Number(p), 0) >>> 0;
}

function toIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export function isIPv4(s: string): boolean {
  const parts = s.split(".");
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

/** Returns the broadcast address, or an error text when it cannot be derived. */
export function broadcastFor(host: string, interfaces = networkInterfaces()): { ok: true; address: string } | { ok: false; error: string } {
  if (!isIPv4(host)) return { ok: false, error: `"${host}" is not an IPv4 address` };
  if (host.startsWith("127.")) return { ok: true, address: "127.255.255.255" };
  for (const list of Object.values(interfaces))
    for (const i of list ?? [])
      if (i.family === "IPv4" && i.address === host) {
        const mask = toInt(i.netmask);
        if (mask === 0xffffffff) return { ok: false, error: `interface of ${host} has a /32 netmask: pass -broadcast` };
        const b = (toInt(host) | ~mask) >>> 0;
        if (b === 0xffffffff) return { ok: false, error: `the broadcast of ${host}/${i.netmask} would be 255.255.255.255: pass -broadcast` };
        return { ok: true, address: toIp(b) };
      }
  return { ok: false, error: `no interface has address ${host}: pass -broadcast, or a -host this machine has` };
}
