// The official openai Node SDK against a base URL: prints, as one JSON line, a whole
// completion, the chunks of a streamed one, and the error a bad key gets.
// Usage: node chat.mjs BASE_URL API_KEY MODEL
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello to ann@example.com" }];

const whole = await client.chat.completions.create({ model, messages });
const chunks = [];
for await (const chunk of await client.chat.completions.create({ model, messages, stream: true })) {
  chunks.push(chunk);
}
let refused = null;
try {
  await new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 }).chat.completions.create({
    model,
    messages,
  });
} catch (error) {
  refused = { status: error.status, type: error.type ?? null, code: error.code ?? null };
}
console.log(JSON.stringify({ whole, chunks, refused }));
