"""Local sentence embeddings: all-MiniLM-L6-v2 on onnxruntime, no network.

* ``model_export`` turns the packaged safetensors weights into one ONNX graph
  (BERT encoder + mean pooling + L2 normalisation), optionally int8.
* ``model_files`` builds that graph once per machine, atomically and under a
  file lock, and says where it is (``ensure_model``).
* ``encoder`` tokenizes and runs the graph (``Encoder``).
* ``batcher`` coalesces concurrent callers of one event loop into batches run
  on one worker thread (``EmbeddingBatcher``).
"""
