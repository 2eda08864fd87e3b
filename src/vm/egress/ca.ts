// A certificate authority per sandbox: the guest trusts its certificate, so the egress proxy can
// terminate the guest's TLS with a leaf made on demand for the name the guest asked for. The CA's
// private key is a non-extractable WebCrypto key: it never leaves this process.
//
// X.509 by @peculiar/x509 (pinned): it signs through Node's WebCrypto, so ECDSA P-256 keys and
// signatures are native (a leaf takes about 10 ms on this project's 2-core machine), and it is maintained and typed.
// node-forge, the other candidate, makes RSA certificates only, in JavaScript. @peculiar/x509
// resolves its parts through tsyringe, which needs the Reflect metadata API: imported first.
import "reflect-metadata";

import { KeyObject, randomBytes, webcrypto } from "node:crypto";
import { isIP } from "node:net";
import { createSecureContext, type SecureContext } from "node:tls";

import * as x509 from "@peculiar/x509";

/** Where the guest keeps the sandbox's CA certificate alone. */
export const GUEST_CA_PATH = "/etc/msb/ca.pem";
/** Where the guest keeps the system bundle with the sandbox's CA appended. */
export const GUEST_BUNDLE_PATH = "/etc/msb/ca-bundle.pem";
/**
 * The distributions' system bundles (Debian/Alpine, Fedora/RHEL, Arch/macOS-style); the installer
 * appends the CA to each that exists, and builds GUEST_BUNDLE_PATH from the first that exists.
 */
export const GUEST_SYSTEM_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"] as const;
/**
 * The environment for guest processes: OpenSSL's and Python requests' variables replace the trust
 * store, so they name the bundle; Node's adds to its own, so it names the CA alone.
 */
export const GUEST_TRUST_ENV: Readonly<Record<string, string>> = {
  SSL_CERT_FILE: GUEST_BUNDLE_PATH,
  REQUESTS_CA_BUNDLE: GUEST_BUNDLE_PATH,
  NODE_EXTRA_CA_CERTS: GUEST_CA_PATH,
};

const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGN = { name: "ECDSA", hash: "SHA-256" } as const;
const HOUR = 3600_000;
// A guest's clock may run behind the host's: certificates start a while back.
const SKEW = HOUR;
const CA_LIFETIME = 365 * 24 * HOUR;
const LEAF_LIFETIME = 24 * HOUR;
// Leaves are remade after half their life, so none served is about to expire.
const LEAF_RENEW = LEAF_LIFETIME / 2;
const MAX_LEAVES = 512;

// @peculiar/x509's types name the DOM's Crypto, which this project's lib does not include.
x509.cryptoProvider.set(webcrypto as never);

const serial = () => {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // a positive INTEGER
  return b.toString("hex");
};

/** Whether `name` is a DNS host name (letters, digits, hyphens, underscores in labels), as a certificate may carry. */
export function isHostname(name: string): boolean {
  return name.length <= 253 && /^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?$/i.test(name);
}

export class SandboxCA {
  private readonly leaves = new Map<string, { context: Promise<SecureContext>; renewAt: number }>();

  private constructor(
    /** The CA certificate, PEM: what the guest trusts. */
    readonly certificatePem: string,
    private readonly cert: x509.X509Certificate,
    private readonly signingKey: webcrypto.CryptoKey,
    private readonly leafKeys: webcrypto.CryptoKeyPair,
    private readonly leafKeyPem: string,
  ) {}

  /** A new CA (and the one key pair its leaves share). `name` goes in its subject. */
  static async create(name = "sandbox"): Promise<SandboxCA> {
    const subtle = webcrypto.subtle;
    // The CA's private key is not extractable; the leaves' is, since a TLS context takes PEM.
    const caKeys = (await subtle.generateKey(EC, false, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const leafKeys = (await subtle.generateKey(EC, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=microsandbox ${name.replace(/[^A-Za-z0-9 ._-]/g, "_").slice(0, 40)} CA, O=microsandbox`,
      notBefore: new Date(now - SKEW),
      notAfter: new Date(now + CA_LIFETIME),
      keys: caKeys,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
      ],
    });
    const leafKeyPem = KeyObject.from(leafKeys.privateKey).export({ type: "pkcs8", format: "pem" }) as string;
    return new SandboxCA(cert.toString("pem"), cert, caKeys.privateKey, leafKeys, leafKeyPem);
  }

  /**
   * A TLS context with a leaf for `name` (a DNS name or an IP address), made on first use and kept
   * (at most MAX_LEAVES, least recently used dropped) until half its short life has passed.
   */
  leafContext(name: string): Promise<SecureContext> {
    const key = name.toLowerCase();
    const hit = this.leaves.get(key);
    this.leaves.delete(key);
    if (hit && hit.renewAt > Date.now()) {
      this.leaves.set(key, hit);
      return hit.context;
    }
    const context = this.leafPem(key).then((cert) => createSecureContext({ key: this.leafKeyPem, cert, minVersion: "TLSv1.2" }));
    // A failure is not kept: the next connection tries again.
    context.catch(() => this.leaves.get(key)?.context === context && this.leaves.delete(key));
    this.leaves.set(key, { context, renewAt: Date.now() + LEAF_RENEW });
    if (this.leaves.size > MAX_LEAVES) this.leaves.delete(this.leaves.keys().next().value!);
    return context;
  }

  /** The leaf certificate for `name`, PEM. */
  async leafPem(name: string): Promise<string> {
    const ip = isIP(name) !== 0;
    if (!ip && !isHostname(name)) throw new Error(`no certificate for ${JSON.stringify(name)}: not a host name or an address`);
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      // Names longer than a CN may be live in the subjectAltName alone, which is what clients check.
      subject: name.length <= 64 ? `CN=${name}` : "O=microsandbox",
      issuer: this.cert.subject,
      notBefore: new Date(now - SKEW),
      notAfter: new Date(now + LEAF_LIFETIME),
      publicKey: this.leafKeys.publicKey,
      signingKey: this.signingKey,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: ip ? "ip" : "dns", value: name }]),
        // Strict verifiers (Python 3.13's VERIFY_X509_STRICT) want the issuer's key named.
        await x509.AuthorityKeyIdentifierExtension.create(this.cert.publicKey),
        await x509.SubjectKeyIdentifierExtension.create(this.leafKeys.publicKey),
      ],
    });
    return cert.toString("pem");
  }
}
