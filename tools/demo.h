/*
 * `zmlx demo` (tools/cmd_demo.c: corpus, training, summary;
 * tools/demo_generate.c: sampling): what the two files share.
 */
#ifndef ZMLX_TOOLS_DEMO_H
#define ZMLX_TOOLS_DEMO_H

#include <stddef.h>
#include <stdint.h>

#include "zmlx.h"

#define DEMO_TRY(x)                      \
  do {                                   \
    zmlx_status demo_st_ = (x);          \
    if (demo_st_ != ZMLX_OK) return demo_st_; \
  } while (0)

/* The demo's random numbers (batches, sampling): xorshift64, seeded. */
static inline uint64_t demo_next_u64(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

typedef struct demo_config {
  const char *name;
  zmlx_lm_config model; /* vocab, seed and device are filled in by the command */
  int batch, seq;       /* sequences per step, bytes per sequence */
  int steps;            /* default training steps */
  double lr;            /* peak learning rate */
  int eval_every;       /* steps between validation losses */
  int sample_bytes;     /* bytes generated after the prompt */
} demo_config;

typedef struct demo_corpus {
  unsigned char *bytes;
  size_t n, n_train; /* bytes [0, n_train) train, [n_train, n) validate */
} demo_corpus;

typedef struct demo_point {
  int step;
  double loss, val; /* val NaN between evaluations */
} demo_point;

typedef struct demo_run {
  const demo_config *cfg;
  zmlx_device *dev;
  zmlx_lm *lm;
  demo_corpus corpus;
  int steps, batch, json, tty; /* batch 0: the config's */
  double lr;                   /* 0: the config's */
  uint64_t seed;
  const char *out_dir, *corpus_dir, *prompt;
  double loss_first, loss_last, val_first, val_last;
  double train_seconds, train_tokens_per_s;
  double prefill_tokens_per_s, decode_tokens_per_s;
  char *sample; /* generated text after the prompt (malloc'ed) */
  int prompt_used; /* bytes of the prompt the model saw (at most half its window) */
  char checkpoint[4096], plot[4096]; /* files written ("" when not) */
  demo_point *curve;
  int n_curve, cap_curve;
} demo_run;

/* The sorted text files of dir, concatenated; the last 10 % validate.
 * 0, or -1 when the directory cannot be read or holds less than 1 KiB. */
int demo_read_corpus(const char *dir, demo_corpus *c);
/* One point of the loss curves. */
void demo_curve_add(demo_run *r, int step, double loss, double val);
/* r->sample: cfg->sample_bytes sampled after r->prompt (temperature 0.8,
 * top-k 40, seeded) through the paged KV cache (zmlx_lm_prefill, then
 * zmlx_lm_decode), with the prefill and decode rates. */
zmlx_status demo_generate(demo_run *r);
/* The loss curves as a PNG at path (cairo): 0, 1 when built without
 * cairo, -1 when drawing or writing failed. */
int demo_plot(const demo_run *r, const char *path);

#endif
