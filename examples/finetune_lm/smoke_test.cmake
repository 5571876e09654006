# CTest smoke test of finetune_lm on committed tiny assets (tests/fixtures/tiny-llama-bpe: a random
# 2-layer Llama and a byte-level BPE tokenizer in which " good" and " bad" are single tokens, and the
# 24 sentences of tests/fixtures/tiny_sentiment.tsv): every mode, both objectives, Adam's LoRA path,
# a resumed continuation, the files a run leaves and the tensor names in trained.safetensors.
# Called with -DPROGRAM=... -DLIST_PROGRAM=<safetensors_roundtrip> -DFIXTURES=tests/fixtures -DOUT=<scratch dir>.
file(REMOVE_RECURSE "${OUT}")
set(_data "${FIXTURES}/tiny_sentiment.tsv")
set(_common --model "${FIXTURES}/tiny-llama-bpe" --train "${_data}" --dev "${_data}" --test "${_data}" --batch 8
            --threads 1 --label-words positive=good,negative=bad)

function(run_ok what)
  execute_process(COMMAND "${PROGRAM}" ${_common} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "finetune_lm ${what} failed (exit ${rc})")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

function(expect_tensors dir what)  # ARGN: regexes the listing must match
  execute_process(COMMAND "${LIST_PROGRAM}" list "${dir}/trained.safetensors" RESULT_VARIABLE rc OUTPUT_VARIABLE listing)
  foreach(re IN LISTS ARGN)
    if(NOT rc EQUAL 0 OR NOT listing MATCHES "${re}")
      message(FATAL_ERROR "${what}: trained.safetensors does not match '${re}' (exit ${rc}):\n${listing}")
    endif()
  endforeach()
  set(listing "${listing}" PARENT_SCOPE)
endfunction()

# full, FZOO, then a resumed continuation to twice the budget.
set(_full --optimizer fzoo --mode full --num-perturbations 4 --eval-every 10 --out "${OUT}/full")
run_ok("--mode full" ${_full} --budget-forward-passes 20)
run_ok("--mode full --resume" ${_full} --budget-forward-passes 40 --resume)
if(NOT last_output MATCHES "resumed from")
  message(FATAL_ERROR "the second run did not resume from the checkpoint")
endif()
foreach(f summary.json metrics.csv checkpoint.ckpt trained.safetensors)
  if(NOT EXISTS "${OUT}/full/${f}")
    message(FATAL_ERROR "finetune_lm did not write ${f}")
  endif()
endforeach()
file(READ "${OUT}/full/summary.json" summary)
foreach(key optimizer mode test_accuracy best_dev_accuracy forward_passes trainable_parameters peak_rss_mib seconds
            majority_test_accuracy wall_seconds peak_bytes lr)
  string(JSON value ERROR_VARIABLE missing GET "${summary}" ${key})
  if(missing)
    message(FATAL_ERROR "summary.json lacks ${key}:\n${summary}")
  endif()
endforeach()
string(JSON fp GET "${summary}" forward_passes)
if(NOT fp EQUAL 40)
  message(FATAL_ERROR "summary.json says ${fp} forward passes, expected 40 (20 + 20 after resume, 5 per FZOO step)")
endif()
file(STRINGS "${OUT}/full/metrics.csv" rows)
list(LENGTH rows nrows)
if(NOT nrows EQUAL 6)  # header + evaluations at 0, 10, 20, then 30, 40 after the resume
  message(FATAL_ERROR "metrics.csv has ${nrows} lines, expected 6:\n${rows}")
endif()
expect_tensors("${OUT}/full" "--mode full" "model.embed_tokens.weight Float \\[264, 32\\]"
               "model.layers.1.self_attn.q_proj.weight Float")

# head-free: everything but the tied embedding / LM head.
run_ok("--mode head-free" --optimizer mezo --mode head-free --budget-forward-passes 4 --out "${OUT}/head-free")
expect_tensors("${OUT}/head-free" "--mode head-free" "model.layers.0.mlp.down_proj.weight Float" "model.norm.weight")
if(listing MATCHES "embed_tokens")
  message(FATAL_ERROR "--mode head-free trained the token embedding:\n${listing}")
endif()

# lora with a zeroth-order method and with Adam (gradients through the merged weights).
foreach(opt mezo adam)
  run_ok("--mode lora --optimizer ${opt}" --optimizer ${opt} --mode lora --lora-rank 2 --budget-forward-passes 6
         --out "${OUT}/lora-${opt}")
  expect_tensors("${OUT}/lora-${opt}" "--mode lora" "model.layers.1.self_attn.q_proj.lora_A.weight Float \\[2, 32\\]"
                 "model.layers.1.self_attn.v_proj.lora_B.weight Float \\[16, 2\\]")
  if(listing MATCHES "q_proj.weight|embed_tokens")
    message(FATAL_ERROR "--mode lora saved base weights:\n${listing}")
  endif()
endforeach()
file(READ "${OUT}/lora-adam/summary.json" summary)
string(JSON fp GET "${summary}" forward_passes)
if(NOT fp EQUAL 6)
  message(FATAL_ERROR "Adam: ${fp} forward-pass equivalents after a budget of 6, expected 6 (2 steps of 3)")
endif()

# The language-model objective: perplexity before and after.
run_ok("--objective lm" --objective lm --optimizer mezo --mode full --budget-forward-passes 4 --out "${OUT}/lm")
file(READ "${OUT}/lm/summary.json" summary)
foreach(key test_perplexity zero_shot_test_perplexity best_dev_perplexity)
  string(JSON value ERROR_VARIABLE missing GET "${summary}" ${key})
  if(missing OR NOT value GREATER 1)
    message(FATAL_ERROR "--objective lm: summary.json's ${key} is '${value}', expected a perplexity > 1:\n${summary}")
  endif()
endforeach()

# A label word of several tokens is an error naming the word (the default " terrible" is 9 byte tokens here).
execute_process(COMMAND "${PROGRAM}" --model "${FIXTURES}/tiny-llama-bpe" --train "${_data}" --dev "${_data}" --test "${_data}"
                        --budget-forward-passes 0 --out "${OUT}/bad" RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
if(NOT rc EQUAL 1 OR NOT err MATCHES "label word \" terrible\" of 'negative' is 9 tokens")
  message(FATAL_ERROR "a multi-token label word was not rejected clearly (exit ${rc}): ${err}")
endif()
execute_process(COMMAND "${PROGRAM}" --print-default-lr --optimizer mezo --mode full RESULT_VARIABLE rc OUTPUT_VARIABLE lr)
string(STRIP "${lr}" lr)
if(NOT rc EQUAL 0 OR lr STREQUAL "")
  message(FATAL_ERROR "--print-default-lr printed '${lr}' (exit ${rc})")
endif()
message("finetune_lm smoke test passed")
