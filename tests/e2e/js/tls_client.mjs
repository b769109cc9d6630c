// The official JS client over HTTPS, as a browser-less app uses it: the CA comes from
// NODE_EXTRA_CA_CERTS, the token from an X-Chroma-Token header. Prints one JSON line.
import { ChromaClient } from "chromadb";

const client = new ChromaClient({
  host: "127.0.0.1", port: Number(process.env.GUARD_PORT), ssl: true,
  headers: { "x-chroma-token": process.env.GUARD_TOKEN },
});
const out = {};
try {
  out.heartbeat = (await client.heartbeat()) > 0;
  const collection = await client.getOrCreateCollection({ name: "from-js", embeddingFunction: null });
  await collection.add({ ids: ["js-1", "js-2"], embeddings: [[1, 0], [0, 1]], documents: ["one", "two"] });
  const got = await collection.query({ queryEmbeddings: [[1, 0.1]], nResults: 1 });
  out.query = got.ids[0];
  out.count = await collection.count();
} catch (error) {
  out.error = String(error && error.message || error);
}
console.log(JSON.stringify(out));
