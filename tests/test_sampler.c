/* Sampler: greedy, determinism per seed, the filters (top-k, top-p, min-p), the repetition
   penalty, the drawn distribution, and top-k selection against a full sort. */

static aq_sampler *sampler_with(float temp, int top_k, float top_p, float min_p, float penalty, uint64_t seed, int n_vocab) {
    aq_sampler_params p = aq_sampler_default_params();
    p.temperature = temp; p.top_k = top_k; p.top_p = top_p; p.min_p = min_p; p.repeat_penalty = penalty; p.seed = seed;
    return aq_sampler_new(&p, n_vocab);
}

static void test_sampler_greedy_and_filters(void) {
    float logits[6] = {1.0f, 3.0f, 3.0f, 2.9f, -1.0f, 0.5f};
    aq_sampler *s;
    int i, seen[6] = {0};
    s = sampler_with(0, 0, 1, 0, 1, 1, 6);
    CHECK(aq_sampler_sample(s, logits) == 1);            /* ties go to the lowest id */
    aq_sampler_free(s);
    s = sampler_with(1.0f, 1, 1, 0, 1, 7, 6);            /* top-k 1 is greedy at any temperature */
    for (i = 0; i < 200; i++) CHECK(aq_sampler_sample(s, logits) == 1);
    aq_sampler_free(s);
    s = sampler_with(1.0f, 3, 1, 0, 1, 7, 6);            /* top-k 3: only ids 1, 2, 3 */
    for (i = 0; i < 2000; i++) seen[aq_sampler_sample(s, logits)]++;
    CHECK(seen[1] && seen[2] && seen[3] && !seen[0] && !seen[4] && !seen[5]);
    aq_sampler_free(s);
    memset(seen, 0, sizeof seen);
    s = sampler_with(1.0f, 0, 0.5f, 0, 1, 7, 6);         /* top-p 0.5: ids 1 and 2 hold > 0.5 */
    for (i = 0; i < 2000; i++) seen[aq_sampler_sample(s, logits)]++;
    CHECK(seen[1] && seen[2] && !seen[0] && !seen[3] && !seen[4] && !seen[5]);
    aq_sampler_free(s);
    memset(seen, 0, sizeof seen);
    s = sampler_with(1.0f, 0, 1, 0.5f, 1, 7, 6);         /* min-p 0.5: within a factor 2 of the top */
    for (i = 0; i < 2000; i++) seen[aq_sampler_sample(s, logits)]++;
    CHECK(seen[1] && seen[2] && seen[3] && !seen[0] && !seen[4] && !seen[5]);
    aq_sampler_free(s);
    s = sampler_with(0, 0, 1, 0, 2.0f, 1, 6);            /* penalty: 3.0 -> 1.5 for ids 1 and 2 */
    aq_sampler_accept(s, 1);
    aq_sampler_accept(s, 2);
    aq_sampler_accept(s, 2);
    CHECK(aq_sampler_sample(s, logits) == 3);
    aq_sampler_free(s);
}

static void test_sampler_seeded_and_distributed(void) {
    float logits[4] = {0.0f, 1.0f, 2.0f, -0.5f}, expect[4], sum = 0;
    int counts[4] = {0}, i, a[50], b[50], same = 1, differ = 0;
    aq_sampler *s1 = sampler_with(1.0f, 0, 1, 0, 1, 123, 4), *s2 = sampler_with(1.0f, 0, 1, 0, 1, 123, 4);
    aq_sampler *s3 = sampler_with(1.0f, 0, 1, 0, 1, 124, 4);
    for (i = 0; i < 50; i++) {
        a[i] = aq_sampler_sample(s1, logits);
        b[i] = aq_sampler_sample(s2, logits);
        same &= a[i] == b[i];
        differ |= aq_sampler_sample(s3, logits) != a[i];
    }
    CHECK(same && differ);
    aq_sampler_reset(s1);
    for (i = 0; i < 50; i++) same &= aq_sampler_sample(s1, logits) == a[i];
    CHECK(same);
    for (i = 0; i < 4; i++) { expect[i] = expf(logits[i]); sum += expect[i]; }
    for (i = 0; i < 40000; i++) counts[aq_sampler_sample(s1, logits)]++;
    for (i = 0; i < 4; i++)
        CHECKF(fabsf((float)counts[i] / 40000.0f - expect[i] / sum) < 0.01f, "id %d drawn %.4f, softmax %.4f", i,
               (float)counts[i] / 40000.0f, expect[i] / sum);
    aq_sampler_free(s1); aq_sampler_free(s2); aq_sampler_free(s3);
}

static void test_top_k_selection_equals_sort(void) {
    aq__cand c[300], sorted[300];
    int trial, i, n, k, bad = 0;
    for (trial = 0; trial < 500; trial++) {
        n = 1 + (int)(rnd_u64() % 300);
        k = 1 + (int)(rnd_u64() % (uint64_t)n);
        for (i = 0; i < n; i++) { c[i].id = i; c[i].logit = (float)(rnd_u64() % 20); } /* many ties */
        memcpy(sorted, c, sizeof(aq__cand) * (size_t)n);
        qsort(sorted, (size_t)n, sizeof *sorted, aq__cand_desc);
        aq__select_top(c, n, k);
        qsort(c, (size_t)k, sizeof *c, aq__cand_desc);
        for (i = 0; i < k; i++) bad += c[i].id != sorted[i].id;
    }
    CHECKF(bad == 0, "%d mismatches", bad);
}

static void sampler_tests(void) {
    RUN(test_sampler_greedy_and_filters);
    RUN(test_sampler_seeded_and_distributed);
    RUN(test_top_k_selection_equals_sort);
}
