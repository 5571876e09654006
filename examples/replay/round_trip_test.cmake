# CTest round trip of a trajectory (docs/trajectory.md) on committed tiny assets (a random 2-layer
# BERT and 24 sentences): finetune_classifier --trajectory trains a few steps of each ZO method and
# writes base.safetensors and final.safetensors; replay applies the log to base.safetensors, and
# its output must be final.safetensors byte for byte. The FZOO log is continued by two resumed
# runs, the second from an older checkpoint than the log's end. finetune_lm (a random 2-layer
# Llama) does the same with MeZO on LoRA adapters. Also: --list shows every record, and a
# checkpoint without the log's tensors or --optimizer adam is refused clearly.
# Called with -DPROGRAM=<finetune_classifier> -DLM_PROGRAM=<finetune_lm> -DREPLAY=<replay>
# -DFIXTURES=tests/fixtures -DOUT=<scratch dir>.
file(REMOVE_RECURSE "${OUT}")
set(_data "${FIXTURES}/tiny_sentiment.tsv")
set(_trainer "${PROGRAM}")
set(_common --model "${FIXTURES}/tiny-bert" --train "${_data}" --dev "${_data}" --test "${_data}" --batch 8
            --threads 1 --quiet)

function(run_checked what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc}):\n${out}${err}")
  endif()
  set(run_output "${out}${err}" PARENT_SCOPE)
endfunction()

# <name>: run directory; <steps>: the steps the log must hold; <budget>: forward passes of the
# first run (a resumed second run to RESUME_BUDGET when that is set); ARGN: the runs' options.
function(round_trip name steps budget)
  set(dir "${OUT}/${name}")
  set(log "${dir}/run.ztraj")
  run_checked("${name}" "${_trainer}" ${_common} --out "${dir}" --trajectory "${log}" ${ARGN}
              --budget-forward-passes ${budget})
  if(DEFINED RESUME_BUDGET)
    execute_process(COMMAND "${CMAKE_COMMAND}" -E copy "${dir}/checkpoint.ckpt" "${dir}/first.ckpt")
    run_checked("${name} --resume" "${_trainer}" ${_common} --out "${dir}" --trajectory "${log}"
                ${ARGN} --budget-forward-passes ${RESUME_BUDGET} --resume)
  endif()
  if(DEFINED REWIND_BUDGET)
    # Back to the first run's checkpoint, as after a kill that lost the later ones: the log holds
    # steps past it, which the resumed run repeats; the writer must cut them off.
    execute_process(COMMAND "${CMAKE_COMMAND}" -E copy "${dir}/first.ckpt" "${dir}/checkpoint.ckpt")
    run_checked("${name} --resume from the first checkpoint" "${_trainer}" ${_common} --out "${dir}"
                --trajectory "${log}" ${ARGN} --budget-forward-passes ${REWIND_BUDGET} --resume)
    if(NOT run_output MATCHES "dropped [1-9][0-9]* record")
      message(FATAL_ERROR "${name}: resuming from an older checkpoint did not drop the log's later records:\n${run_output}")
    endif()
  endif()
  foreach(f base.safetensors final.safetensors run.ztraj)
    if(NOT EXISTS "${dir}/${f}")
      message(FATAL_ERROR "${_trainer} --trajectory did not write ${dir}/${f}")
    endif()
  endforeach()
  file(SHA256 "${dir}/base.safetensors" base_hash)
  file(SHA256 "${dir}/final.safetensors" final_hash)
  if(base_hash STREQUAL final_hash)
    message(FATAL_ERROR "${name}: training left the weights unchanged; the round trip would prove nothing")
  endif()
  run_checked("replay ${name}" "${REPLAY}" "${log}" --base "${dir}/base.safetensors" --out "${dir}/replayed.safetensors" --threads 1)
  message("${run_output}")
  if(NOT run_output MATCHES "for ${steps} replayed step records")
    message(FATAL_ERROR "${name}: replay did not apply ${steps} step records:\n${run_output}")
  endif()
  file(SHA256 "${dir}/replayed.safetensors" replayed_hash)
  if(NOT replayed_hash STREQUAL final_hash)
    message(FATAL_ERROR "${name}: replaying ${log} onto base.safetensors gave ${replayed_hash}, "
                        "final.safetensors is ${final_hash}: not bit for bit")
  endif()
  # The listing has one CSV row per record, after its header.
  run_checked("replay --list ${name}" "${REPLAY}" "${log}" --list)
  string(REGEX MATCHALL "\n[0-9]+,[0-9a-f]+,(applied|skipped|aborted)," rows "\n${run_output}")
  list(LENGTH rows nrows)
  if(NOT nrows EQUAL steps)
    message(FATAL_ERROR "${name}: replay --list printed ${nrows} records, expected ${steps}:\n${run_output}")
  endif()
  message("${name}: ${steps} steps replayed bit for bit (${final_hash})")
endfunction()

# FZOO (N = 4: 5 forward passes a step), full fine-tune: 4 steps, resumed to 8, then resumed again
# from the checkpoint at step 4 to 10: the log holds steps 0-3 of the first run and 4-9 of the last.
set(RESUME_BUDGET 40)
set(REWIND_BUDGET 50)
round_trip(fzoo_resumed 10 20 --optimizer fzoo --mode full --num-perturbations 4 --eval-every 10)
unset(RESUME_BUDGET)
unset(REWIND_BUDGET)
# MeZO on LoRA adapters with weight decay: 6 steps.
round_trip(mezo_lora 6 12 --optimizer mezo --mode lora --weight-decay 0.01 --eval-every 6)
# AdaMeZO on the top layer and the head (the layer below frozen): 7 steps, past its window of 3.
round_trip(adamezo 7 14 --optimizer adamezo --window 3 --mode full --train-layers 1 --eval-every 14)
# finetune_lm, prompt-based classification, MeZO on LoRA adapters: 5 steps.
set(_trainer "${LM_PROGRAM}")
set(_common --model "${FIXTURES}/tiny-llama-bpe" --train "${_data}" --dev "${_data}" --test "${_data}" --batch 8
            --threads 1 --quiet --label-words positive=good,negative=bad)
round_trip(lm_mezo_lora 5 10 --optimizer mezo --mode lora --eval-every 10)
set(_trainer "${PROGRAM}")
set(_common --model "${FIXTURES}/tiny-bert" --train "${_data}" --dev "${_data}" --test "${_data}" --batch 8
            --threads 1 --quiet)

# A checkpoint without the log's tensors (the fixture's pretrained weights have no classifier) is refused.
execute_process(COMMAND "${REPLAY}" "${OUT}/adamezo/run.ztraj" --base "${FIXTURES}/tiny-bert/model.safetensors"
                        --out "${OUT}/refused.safetensors"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "has no tensor '.*', which .* trains" OR EXISTS "${OUT}/refused.safetensors")
  message(FATAL_ERROR "replay onto a checkpoint lacking the log's tensors was not refused clearly (exit ${rc}):\n${out}${err}")
endif()
# --trajectory records ZO steps only.
execute_process(COMMAND "${PROGRAM}" ${_common} --out "${OUT}/adam" --optimizer adam --trajectory "${OUT}/adam.ztraj"
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--optimizer adam")
  message(FATAL_ERROR "--trajectory with --optimizer adam was not rejected clearly (exit ${rc}): ${err}")
endif()
message("round trip test passed")
