/* `zmlx demo`: the main job. Trains a small byte-level MoE transformer
 * (zmlx_lm: zmlx's own kernels and autograd, the fused AdamW) on the
 * licence texts every Debian machine ships, holding out a validation split,
 * with a progress line; saves the weights (safetensors) and the loss
 * curves (PNG), reloads the checkpoint and samples text from a prompt
 * through the paged KV cache. The summary goes to stdout (a table, or JSON
 * with --json). */
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "demo.h"

const char zmlx_demo_usage[] =
    "usage: zmlx demo [--backend cuda|opencl] [--config tiny|small|large] [--steps N]\n"
    "                 [--batch N] [--lr X] [--seed N] [--out DIR] [--corpus DIR]\n"
    "                 [--prompt TEXT] [--json]\n"
    "\n"
    "Train a byte-level transformer with a mixture-of-experts feed-forward on the\n"
    "text files of --corpus (default /usr/share/common-licenses; every tenth 4 KiB\n"
    "block is held out for validation), then generate text from --prompt.\n"
    "Everything runs on zmlx's kernels: embedding, RMSNorm, RoPE, causal flash\n"
    "attention, MoE gating and experts, cross-entropy, autograd and fused AdamW.\n"
    "\n"
    "options:\n"
    "  --backend B   cuda or opencl (default: CUDA when a GPU is present)\n"
    "  --config C    model and batch size: tiny (tests), small (the CPU default),\n"
    "                large (the GPU default)\n"
    "  --steps N     training steps (default: the config's)\n"
    "  --batch N     sequences per step (default: the config's)\n"
    "  --lr X        peak learning rate (default: the config's)\n"
    "  --seed N      weights, batches and sampling (default 1)\n"
    "  --out DIR     where model.safetensors and loss.png go (default zmlx-demo)\n"
    "  --corpus DIR  training text (default /usr/share/common-licenses)\n"
    "  --prompt T    generation prompt (default \"Permission is hereby granted\")\n"
    "  --json        print the summary as JSON instead of a table\n";

/* ------------------------------------------------------------ configs */

static const demo_config CONFIGS[] = {
    {"tiny", {.dim = 32, .layers = 1, .heads = 2, .kv_heads = 1, .ffn_dim = 32, .experts = 4,
              .top_k = 2}, 4, 32, 20, 3e-3, 10, 48},
    {"small", {.dim = 128, .layers = 2, .heads = 4, .kv_heads = 2, .ffn_dim = 192, .experts = 4,
               .top_k = 2}, 32, 64, 400, 3e-3, 50, 160},
    {"large", {.dim = 512, .layers = 6, .heads = 8, .kv_heads = 4, .ffn_dim = 1024, .experts = 8,
               .top_k = 2}, 32, 256, 2000, 1e-3, 100, 400},
};

static const demo_config *find_config(const char *name) {
  for (size_t i = 0; i < sizeof CONFIGS / sizeof CONFIGS[0]; i++)
    if (!strcmp(CONFIGS[i].name, name)) return &CONFIGS[i];
  return NULL;
}

/* ------------------------------------------------------------- corpus */

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every tenth block of 4 KiB validates: the held-out text is drawn from
 * every file, not only from the last ones in name order. The corpus is
 * rearranged as the training blocks, then the validation blocks. */
static void split_blocks(demo_corpus *c) {
  const size_t block = 4096;
  unsigned char *out = malloc(c->n);
  if (!out) {
    c->n_train = c->n - c->n / 10;
    return;
  }
  size_t w = 0;
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1) c->n_train = w;
    for (size_t b = 0; b * block < c->n; b++)
      if ((b % 10 == 9) == (pass == 1)) {
        size_t len = c->n - b * block < block ? c->n - b * block : block;
        memcpy(out + w, c->bytes + b * block, len);
        w += len;
      }
  }
  free(c->bytes);
  c->bytes = out;
}

int demo_read_corpus(const char *dir, demo_corpus *c) {
  memset(c, 0, sizeof *c);
  DIR *d = opendir(dir);
  if (!d) return -1;
  char *names[512];
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) && n < 512;)
    if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
  closedir(d);
  qsort(names, (size_t)n, sizeof names[0], by_name);
  size_t cap = 1 << 20;
  c->bytes = malloc(cap);
  for (int i = 0; i < n && c->bytes; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    FILE *f = fopen(path, "rb");
    if (f) {
      for (size_t got; c->bytes && (got = fread(c->bytes + c->n, 1, cap - c->n, f)) > 0;) {
        c->n += got;
        if (c->n == cap) c->bytes = realloc(c->bytes, cap *= 2);
      }
      fclose(f);
    }
    free(names[i]);
  }
  if (!c->bytes || c->n < 1024) return -1;
  split_blocks(c);
  return 0;
}

/* --------------------------------------------------------------- batches */

/* B windows of S + 1 bytes from [lo, hi) of the corpus: tokens and the
 * next bytes as targets, both [B, S] i32 on dev. */
static zmlx_status make_batch(zmlx_device *dev, const demo_corpus *c, size_t lo, size_t hi, int B,
                              int S, uint64_t *rng, zmlx_array **tokens, zmlx_array **targets) {
  int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * S));
  int32_t *tgt = malloc(sizeof(int32_t) * (size_t)(B * S));
  if (!tok || !tgt) {
    free(tok), free(tgt);
    return ZMLX_ERR_OUT_OF_MEMORY;
  }
  for (int b = 0; b < B; b++) {
    size_t start = lo + (size_t)(demo_next_u64(rng) % (uint64_t)(hi - lo - (size_t)S - 1));
    for (int t = 0; t < S; t++) {
      tok[b * S + t] = c->bytes[start + (size_t)t];
      tgt[b * S + t] = c->bytes[start + (size_t)t + 1];
    }
  }
  int64_t sh[2] = {B, S};
  zmlx_status st = zmlx_array_from_host(dev, ZMLX_I32, 2, sh, tok, tokens);
  if (st == ZMLX_OK) st = zmlx_array_from_host(dev, ZMLX_I32, 2, sh, tgt, targets);
  free(tok), free(tgt);
  return st;
}

/* Mean loss over the validation split: `batches` fixed windows (same for
 * every evaluation), no gradient. */
static zmlx_status validation_loss(zmlx_device *dev, zmlx_lm *lm, const demo_corpus *c,
                                   const demo_config *cfg, double *out) {
  uint64_t rng = 0x5EEDu;
  double sum = 0;
  const int batches = 4;
  for (int i = 0; i < batches; i++) {
    zmlx_array *tok = NULL, *tgt = NULL, *loss = NULL;
    double v = 0;
    zmlx_status st = make_batch(dev, c, c->n_train, c->n, cfg->batch, cfg->seq, &rng, &tok, &tgt);
    if (st == ZMLX_OK) st = zmlx_lm_loss(lm, NULL, tok, tgt, &loss);
    if (st == ZMLX_OK) st = zmlx_array_item(loss, 0, &v);
    zmlx_array_release(tok), zmlx_array_release(tgt), zmlx_array_release(loss);
    if (st != ZMLX_OK) return st;
    sum += v;
  }
  *out = sum / batches;
  return ZMLX_OK;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Linear warm-up over the first 5 % of the steps, then cosine to 10 %. */
static double learning_rate(const demo_config *cfg, int step, int steps) {
  int warm = steps / 20 > 0 ? steps / 20 : 1;
  if (step < warm) return cfg->lr * (step + 1) / warm;
  double t = (double)(step - warm) / (double)(steps - warm > 0 ? steps - warm : 1);
  return cfg->lr * (0.1 + 0.9 * 0.5 * (1 + cos(M_PI * t)));
}

/* ------------------------------------------------------------- progress */

static void progress(const demo_run *r, int step, int steps, double loss, double val, double tps) {
  if (r->tty) {
    int width = 30, filled = (int)((double)width * step / steps);
    fprintf(stderr, "\r[%.*s%*s] step %d/%d  loss %.3f  val %.3f  %.0f tok/s ", filled,
            "##############################", width - filled, "", step, steps, loss, val, tps);
    if (step == steps) fputc('\n', stderr);
  } else if (step == steps || step % r->cfg->eval_every == 0) {
    fprintf(stderr, "step %d/%d  loss %.3f  val %.3f  %.0f tok/s\n", step, steps, loss, val, tps);
  }
  fflush(stderr);
}

/* ------------------------------------------------------------- training */

static zmlx_status train(demo_run *r) {
  const demo_config *cfg = r->cfg;
  int n = 0;
  zmlx_array *const *params = NULL;
  zmlx_adamw *opt = NULL;
  zmlx_adamw_opts ao = {.struct_size = sizeof ao, .weight_decay = 0.01, .max_grad_norm = 1.0};
  DEMO_TRY(zmlx_lm_parameters(r->lm, &n, &params, NULL));
  DEMO_TRY(zmlx_adamw_create(params, n, &ao, &opt));
  zmlx_array **grads = calloc((size_t)n, sizeof *grads);
  uint64_t rng = r->seed * 0x9E3779B97F4A7C15ULL + 1;
  zmlx_status st = grads ? validation_loss(r->dev, r->lm, &r->corpus, cfg, &r->val_first)
                         : ZMLX_ERR_OUT_OF_MEMORY;
  r->val_last = r->val_first;
  demo_curve_add(r, 0, NAN, r->val_first);
  double t0 = now_s(), tokens = 0;
  for (int step = 0; step < r->steps && st == ZMLX_OK; step++) {
    zmlx_array *tok = NULL, *tgt = NULL, *loss = NULL;
    double v = 0;
    st = make_batch(r->dev, &r->corpus, 0, r->corpus.n_train, cfg->batch, cfg->seq, &rng, &tok,
                    &tgt);
    if (st == ZMLX_OK) st = zmlx_lm_value_and_grad(r->lm, tok, tgt, &loss, grads);
    if (st == ZMLX_OK)
      st = zmlx_adamw_update(opt, grads, n, learning_rate(cfg, step, r->steps), NULL);
    if (st == ZMLX_OK) st = zmlx_array_item(loss, 0, &v);
    for (int i = 0; i < n; i++) zmlx_array_release(grads[i]), grads[i] = NULL;
    zmlx_array_release(tok), zmlx_array_release(tgt), zmlx_array_release(loss);
    if (st != ZMLX_OK) break;
    if (step == 0) r->loss_first = v;
    r->loss_last = v;
    tokens += (double)cfg->batch * cfg->seq;
    if ((step + 1) % cfg->eval_every == 0 || step + 1 == r->steps)
      st = validation_loss(r->dev, r->lm, &r->corpus, cfg, &r->val_last);
    demo_curve_add(r, step + 1, v, ((step + 1) % cfg->eval_every == 0 || step + 1 == r->steps)
                                       ? r->val_last : NAN);
    r->train_seconds = now_s() - t0;
    progress(r, step + 1, r->steps, v, r->val_last, tokens / r->train_seconds);
  }
  r->train_tokens_per_s = r->train_seconds > 0 ? tokens / r->train_seconds : 0;
  free(grads);
  zmlx_adamw_destroy(opt);
  return st;
}

/* ------------------------------------------------------------- summary */

static void print_summary(const demo_run *r) {
  const zmlx_lm_config *m = &r->cfg->model;
  if (r->json) {
    printf("{\"backend\": \"%s\", \"config\": \"%s\", \"steps\": %d, \"seed\": %llu,\n"
           " \"model\": {\"dim\": %d, \"layers\": %d, \"heads\": %d, \"kv_heads\": %d, "
           "\"experts\": %d, \"top_k\": %d, \"ffn_dim\": %d},\n"
           " \"train_loss\": [%.4f, %.4f], \"val_loss\": [%.4f, %.4f],\n"
           " \"train_tokens_per_s\": %.1f, \"train_seconds\": %.2f,\n"
           " \"prefill_tokens_per_s\": %.1f, \"decode_tokens_per_s\": %.1f,\n"
           " \"checkpoint\": \"%s\", \"plot\": \"%s\", \"prompt_bytes\": %d, \"sample\": ",
           zmlx_backend_name(zmlx_device_backend(r->dev)), r->cfg->name, r->steps,
           (unsigned long long)r->seed, m->dim, m->layers, m->heads, m->kv_heads, m->experts,
           m->top_k, m->ffn_dim, r->loss_first, r->loss_last, r->val_first, r->val_last,
           r->train_tokens_per_s, r->train_seconds, r->prefill_tokens_per_s,
           r->decode_tokens_per_s, r->checkpoint, r->plot, r->prompt_used);
    cli_json_string(stdout, r->sample);
    printf("}\n");
    return;
  }
  printf("backend           %s\n", zmlx_backend_name(zmlx_device_backend(r->dev)));
  printf("model             %s: dim %d, %d layers, %d heads (%d kv), %d experts top-%d\n",
         r->cfg->name, m->dim, m->layers, m->heads, m->kv_heads, m->experts, m->top_k);
  printf("train loss        %.3f -> %.3f nats/byte (%d steps)\n", r->loss_first, r->loss_last,
         r->steps);
  printf("validation loss   %.3f -> %.3f nats/byte\n", r->val_first, r->val_last);
  printf("training          %.0f tokens/s, %.1f s\n", r->train_tokens_per_s, r->train_seconds);
  printf("generation        prefill %.0f tokens/s, decode %.1f tokens/s (paged KV cache)\n",
         r->prefill_tokens_per_s, r->decode_tokens_per_s);
  printf("checkpoint        %s (safetensors)\n", r->checkpoint);
  printf("loss curves       %s\n", r->plot[0] ? r->plot : "(not drawn)");
  printf("sample            %.*s%s\n", r->prompt_used, r->prompt, r->sample);
}

/* ------------------------------------------------------------- outputs */

/* The weights as out/model.safetensors, read back for the generation (the
 * round trip a user of the checkpoint relies on), and out/loss.png. */
static zmlx_status save_outputs(demo_run *r) {
  if (mkdir(r->out_dir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: cannot create %s: %s\n", cli_path(), r->out_dir, strerror(errno));
    return ZMLX_ERR_IO;
  }
  snprintf(r->checkpoint, sizeof r->checkpoint, "%s/model.safetensors", r->out_dir);
  DEMO_TRY(zmlx_lm_save(r->lm, r->checkpoint));
  zmlx_lm *loaded = NULL;
  DEMO_TRY(zmlx_lm_load(r->checkpoint, r->dev, &loaded));
  zmlx_lm_destroy(r->lm);
  r->lm = loaded;
  snprintf(r->plot, sizeof r->plot, "%s/loss.png", r->out_dir);
  int p = demo_plot(r, r->plot);
  if (p != 0) {
    fprintf(stderr, "%s: no loss plot: %s\n", cli_path(),
            p > 0 ? "zmlx was built without cairo (libcairo2-dev)" : "cairo could not write it");
    r->plot[0] = '\0';
  }
  return ZMLX_OK;
}

/* -------------------------------------------------------------- command */

static int pick_device(const char *backend, zmlx_device **dev) {
  if (!backend) return zmlx_default_device(dev) == ZMLX_OK;
  zmlx_backend b;
  return zmlx_backend_from_name(backend, &b) == ZMLX_OK && zmlx_device_get(b, 0, dev) == ZMLX_OK;
}

static int parse(int argc, char **argv, demo_run *r, const char **backend, const char **config) {
  for (int i = 1; i < argc; i++) {
    const char *v;
    int k;
#define OPT(name, then)                                         \
  if ((k = cli_option(argc, argv, &i, name, &v))) {             \
    if (k < 0) return 0;                                        \
    then;                                                       \
    continue;                                                   \
  }
    OPT("--backend", *backend = v);
    OPT("--config", *config = v);
    OPT("--steps", r->steps = atoi(v));
    OPT("--batch", r->batch = atoi(v));
    OPT("--lr", r->lr = atof(v));
    OPT("--seed", r->seed = strtoull(v, NULL, 10));
    OPT("--out", r->out_dir = v);
    OPT("--corpus", r->corpus_dir = v);
    OPT("--prompt", r->prompt = v);
#undef OPT
    if (!strcmp(argv[i], "--json")) {
      r->json = 1;
      continue;
    }
    cli_usage_error("unknown argument '%s'", argv[i]);
    return 0;
  }
  return 1;
}

int zmlx_cmd_demo(const cli_command *self, int argc, char **argv) {
  (void)self;
  demo_run r = {.seed = 1, .out_dir = "zmlx-demo", .corpus_dir = "/usr/share/common-licenses",
                .prompt = "Permission is hereby granted", .steps = -1};
  const char *backend = NULL, *config = NULL;
  if (!parse(argc, argv, &r, &backend, &config)) return CLI_USAGE;
  if (!pick_device(backend, &r.dev)) {
    fprintf(stderr, "%s: no %s device: %s\n", cli_path(), backend ? backend : "default",
            zmlx_last_error());
    return CLI_FAIL;
  }
  if (!config) config = zmlx_device_backend(r.dev) == ZMLX_BACKEND_CUDA ? "large" : "small";
  if (!(r.cfg = find_config(config))) return cli_usage_error("unknown config '%s'", config);
  if (r.steps < 0) r.steps = r.cfg->steps;
  /* a private copy of the config, with the flags' overrides */
  demo_config chosen = *r.cfg;
  if (r.batch > 0) chosen.batch = r.batch;
  if (r.lr > 0) chosen.lr = r.lr;
  r.cfg = &chosen;
  if (r.steps < 1) return cli_usage_error("--steps must be at least 1");
  if (demo_read_corpus(r.corpus_dir, &r.corpus) != 0) {
    fprintf(stderr, "%s: cannot read a corpus of at least 1 KiB from %s\n", cli_path(),
            r.corpus_dir);
    return CLI_FAIL;
  }
  r.tty = isatty(2);
  zmlx_lm_config mc = r.cfg->model;
  mc.struct_size = sizeof mc;
  mc.vocab = 256;
  mc.seed = r.seed;
  mc.device = r.dev;
  fprintf(stderr, "zmlx demo: %s on %s, %zu training / %zu validation bytes, %d steps\n",
          r.cfg->name, zmlx_backend_name(zmlx_device_backend(r.dev)), r.corpus.n_train,
          r.corpus.n - r.corpus.n_train, r.steps);
  zmlx_status st = zmlx_lm_create(&mc, &r.lm);
  if (st == ZMLX_OK) st = train(&r);
  if (st == ZMLX_OK) st = save_outputs(&r);
  if (st == ZMLX_OK) st = demo_generate(&r);
  if (st == ZMLX_OK) print_summary(&r);
  else fprintf(stderr, "%s: %s: %s\n", cli_path(), zmlx_status_string(st), zmlx_last_error());
  zmlx_lm_destroy(r.lm);
  free(r.corpus.bytes);
  free(r.curve);
  free(r.sample);
  return st == ZMLX_OK ? CLI_OK : CLI_FAIL;
}
