//! Text encoders and tokenizers against transformers (tools/fixtures/make_text_fixtures.py):
//! the real all-MiniLM-L6-v2 (when the asset is fetched), random-weight BERT and CLIP text models,
//! a CLIP BPE tokenizer, and the small word-level encoder built here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ldmscale_model::text::bert::{Bert, BertConfig, load_bert};
use ldmscale_model::text::clip::load_clip_text;
use ldmscale_model::text::tokenizer::TOKENIZER_FILE;
use ldmscale_model::text::{
    ContextProjection, TextConditioner, TextEncoder, TextModel, TextTokenizer, TinyTextSpec,
    TokenBatch, TokenizerOptions, tiny_text_conditioner, with_reserved_words, word_tokenizer,
};
use ldmscale_model::weights::CONFIG_FILE;
use ldmscale_testkit::{
    RawTensor, assert_mentions, assert_parity, fixture_dir, read_json, read_safetensors, str_array,
    values,
};
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    fixture_dir("text")
}

/// The MiniLM asset directory (tools/fetch-assets.sh minilm), if it has been fetched.
fn minilm_dir() -> Option<PathBuf> {
    let dir = ldmscale_model::text::default_minilm_dir();
    if dir.join("model.safetensors").exists() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: MiniLM not found at {} (run tools/fetch-assets.sh minilm)",
            dir.display()
        );
        None
    }
}

type Io = BTreeMap<String, RawTensor>;

fn read_io(path: &Path) -> Io {
    read_safetensors(path)
}

fn ints(io: &Io, name: &str) -> (Vec<usize>, Vec<i64>) {
    (io[name].shape.clone(), io[name].i64())
}

fn floats(io: &Io, name: &str) -> (Vec<usize>, Vec<f32>) {
    (io[name].shape.clone(), io[name].f32())
}

/// A token batch from the fixture's `input_ids` and `attention_mask`.
fn batch(io: &Io, ids: &str, mask: &str) -> TokenBatch {
    let (shape, ids) = ints(io, ids);
    let (_, mask) = ints(io, mask);
    TokenBatch {
        ids: ids.iter().map(|&i| i as u32).collect(),
        mask: mask.iter().map(|&m| m as u8).collect(),
        batch: shape[0],
        len: shape[1],
    }
}

fn check(what: &str, ours: Tensor<3>, io: &Io, name: &str) {
    let (shape, reference) = floats(io, name);
    assert_eq!(ours.dims().to_vec(), shape, "{what}: shape");
    let ours = values(ours);
    assert_parity(what, &ours, &reference, 1e-5, 1e-4);
}

fn minilm_captions() -> Vec<String> {
    read_json(fixtures().join("minilm/captions.json"))
}

#[test]
fn minilm_tokenizer_ids_equal_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let io = read_io(&fixtures().join("minilm/io.safetensors"));
    let want = batch(&io, "input_ids", "attention_mask");
    let tokenizer =
        TextTokenizer::from_file(&dir.join(TOKENIZER_FILE), &TokenizerOptions::longest(77))
            .unwrap();
    let captions = minilm_captions();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let ours = tokenizer.tokenize(&captions).unwrap();
    assert_eq!(ours, want);
    // The long caption is cut to 77 tokens, [SEP] kept last.
    let long = ours.row(3);
    assert_eq!((long.len(), long[0], long[76]), (77, 101, 102));
}

#[test]
fn minilm_hidden_states_equal_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let device = Device::flex();
    let io = read_io(&fixtures().join("minilm/io.safetensors"));
    let (_, model) = load_bert(&dir, &device).unwrap();
    let tokens = batch(&io, "enc_input_ids", "enc_attention_mask");
    check(
        "minilm last_hidden_state",
        model.encode(&tokens, &device).hidden,
        &io,
        "last_hidden_state",
    );
    // The same through the directory's tokenizer: captions in, states out.
    let conditioner = TextConditioner::load(&dir, None, &device).unwrap();
    let captions = minilm_captions();
    let captions: Vec<&str> = captions[..tokens.batch]
        .iter()
        .map(String::as_str)
        .collect();
    let states = conditioner.encode(&captions, &device).unwrap();
    check(
        "minilm from captions",
        states.hidden,
        &io,
        "last_hidden_state",
    );
    assert_eq!(conditioner.encoder.hidden_size(), 384);
}

#[test]
fn random_bert_equals_transformers_with_padding() {
    let device = Device::flex();
    let dir = fixtures().join("bert_tiny");
    let io = read_io(&dir.join("io.safetensors"));
    // The file holds BertModel's pooler too, which is ignored.
    let (_, model) = load_bert(&dir, &device).unwrap();
    let tokens = batch(&io, "input_ids", "attention_mask");
    check(
        "bert_tiny last_hidden_state",
        model.encode(&tokens, &device).hidden,
        &io,
        "last_hidden_state",
    );
}

#[test]
fn random_clip_text_models_equal_transformers() {
    let device = Device::flex();
    for case in ["clip_quick_gelu", "clip_gelu"] {
        let dir = fixtures().join(case);
        let io = read_io(&dir.join("io.safetensors"));
        let (_, model) = load_clip_text(&dir, &device).unwrap();
        let tokens = batch(&io, "input_ids", "attention_mask");
        let ids = tokens.ids_tensor(&device);
        // Stable Diffusion's use: causal mask only, the default of `encode`.
        check(
            &format!("{case} causal"),
            model.encode(&tokens, &device).hidden,
            &io,
            "no_mask",
        );
        let mask = tokens.mask_tensor(&device);
        check(
            &format!("{case} causal+padding"),
            model.forward(ids.clone(), Some(mask)),
            &io,
            "with_mask",
        );
        let skip = model.with_clip_skip(1);
        check(
            &format!("{case} penultimate"),
            skip.forward(ids, None),
            &io,
            "penultimate",
        );
    }
}

#[test]
fn clip_files_written_before_transformers_5_load() {
    // Stable Diffusion's text_encoder/model.safetensors keeps every tensor under "text_model.".
    let device = Device::flex();
    let src = fixtures().join("clip_quick_gelu");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut renamed: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (format!("text_model.{k}"), v))
        .collect();
    let position_ids: Vec<u8> = (0..16i64).flat_map(|i| i.to_le_bytes()).collect();
    renamed.push((
        "text_model.embeddings.position_ids".into(),
        safetensors::tensor::TensorView::new(Dtype::I64, vec![1, 16], &position_ids).unwrap(),
    ));
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(renamed, None).unwrap(),
    )
    .unwrap();
    let io = read_io(&src.join("io.safetensors"));
    let tokens = batch(&io, "input_ids", "attention_mask");
    let (_, model) = load_clip_text(dir.path(), &device).unwrap();
    check(
        "clip text_model. prefix",
        model.encode(&tokens, &device).hidden,
        &io,
        "no_mask",
    );
}

#[test]
fn clip_bpe_tokenizer_ids_equal_transformers() {
    let dir = fixtures().join("clip_bpe");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json")).unwrap()).unwrap();
    let max_length = want["max_length"].as_u64().unwrap() as usize;
    // The pad token comes from tokenizer_config.json beside the file.
    let tokenizer = TextTokenizer::from_file(
        &dir.join(TOKENIZER_FILE),
        &TokenizerOptions::fixed(max_length),
    )
    .unwrap();
    assert_eq!(
        Some(tokenizer.pad_id()),
        tokenizer.token_to_id(want["pad_token"].as_str().unwrap())
    );
    let captions = str_array(&want["captions"]);
    let ours = tokenizer.tokenize(&captions).unwrap();
    let rows = |key: &str| -> Vec<u32> {
        want[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
            })
            .collect()
    };
    assert_eq!(ours.ids, rows("input_ids"));
    assert_eq!(
        ours.mask.iter().map(|&m| m as u32).collect::<Vec<_>>(),
        rows("attention_mask")
    );
    assert_eq!((ours.batch, ours.len), (captions.len(), max_length));
}

const CAPTIONS: [&str; 5] = [
    "a red circle",
    "a blue square",
    "two red squares",
    "a red circle and a blue circle",
    "One GREEN triangle!",
];

#[test]
fn word_vocabulary_is_deterministic_and_counts_words() {
    let tokenizer = word_tokenizer(&CAPTIONS, 100, 1, 16).unwrap();
    // Specials, then by count (a:4, circle:3, red:3, blue:2, ...), ties in byte order.
    let id = |w: &str| tokenizer.token_to_id(w).unwrap();
    assert_eq!(
        (id("[PAD]"), id("[UNK]"), id("[CLS]"), id("[SEP]")),
        (0, 1, 2, 3)
    );
    assert_eq!((id("a"), id("circle"), id("red"), id("blue")), (4, 5, 6, 7));
    let tokens = tokenizer.tokenize(&["A red hexagon!", "blue"]).unwrap();
    assert_eq!(tokens.row(0), &[2, id("a"), id("red"), 1, id("!"), 3]);
    assert_eq!(tokens.row(1), &[2, id("blue"), 3, 0, 0, 0]);
    assert_eq!(tokens.mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    // min_count 2 drops the words seen once; max_vocab caps the table.
    let frequent = word_tokenizer(&CAPTIONS, 100, 2, 16).unwrap();
    assert_eq!(frequent.token_to_id("green"), None);
    assert_eq!(word_tokenizer(&CAPTIONS, 6, 1, 16).unwrap().vocab_size(), 6);
    let again = word_tokenizer(&CAPTIONS, 100, 1, 16).unwrap();
    assert_eq!(
        again.inner().to_string(false).unwrap(),
        tokenizer.inner().to_string(false).unwrap()
    );
}

#[test]
fn reserved_words_get_their_own_ids_after_the_learned_vocabulary() {
    let learned = || word_tokenizer(&CAPTIONS, 100, 2, 16).unwrap();
    let size = learned().vocab_size();
    let words = vec!["sks".to_string(), "zwx".to_string()];
    let tokenizer = with_reserved_words(learned(), &words, 16).unwrap();
    assert_eq!(tokenizer.vocab_size(), size + 2);
    let sks = tokenizer.token_to_id("sks").unwrap();
    assert_eq!(
        (sks, tokenizer.token_to_id("zwx")),
        (size as u32, Some(size as u32 + 1))
    );
    // Learned ids are unchanged, and the word is read whole, not as [UNK].
    assert_eq!(tokenizer.token_to_id("red"), learned().token_to_id("red"));
    let tokens = tokenizer.tokenize(&["a sks circle"]).unwrap();
    assert_eq!(tokens.row(0)[2], sks);
    for (bad, says) in [
        ("red", "already a word"),
        ("Sks", "lower-case"),
        ("a b", "lower-case"),
    ] {
        let err = with_reserved_words(learned(), &[bad.to_string()], 16).unwrap_err();
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
}

#[test]
fn tiny_encoder_saves_as_a_transformers_directory_and_reloads() {
    let device = Device::flex();
    let spec = TinyTextSpec {
        min_count: 1,
        reserved: vec!["sks".into()],
        ..TinyTextSpec::default()
    };
    let conditioner = tiny_text_conditioner(&CAPTIONS, &spec, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    conditioner.save(dir.path()).unwrap();
    let reloaded = TextConditioner::load(dir.path(), None, &device).unwrap();
    assert_eq!(reloaded.tokenizer.max_length(), spec.max_length);
    let sks = conditioner.tokenizer.token_to_id("sks");
    assert!(sks.is_some() && reloaded.tokenizer.token_to_id("sks") == sks);
    let a = conditioner.encode(&CAPTIONS, &device).unwrap();
    let b = reloaded.encode(&CAPTIONS, &device).unwrap();
    assert_eq!(a.hidden.dims(), [5, 9, 64]);
    assert_eq!(a.hidden.into_data(), b.hidden.into_data());
    assert_eq!(a.mask.into_data(), b.mask.into_data());
}

#[test]
fn tiny_encoder_and_projection_train() {
    // Gradients reach every parameter, and a few SGD steps lower a simple loss.
    use burn::optim::{GradientsParams, SgdConfig};
    let device = Device::flex().autodiff();
    let spec = TinyTextSpec {
        width: 16,
        heads: 2,
        min_count: 1,
        ..TinyTextSpec::default()
    };
    let conditioner = tiny_text_conditioner(&CAPTIONS, &spec, &device).unwrap();
    let tokens = conditioner.tokenizer.tokenize(&CAPTIONS).unwrap();
    let TextModel::Bert(mut encoder) = conditioner.encoder else {
        panic!("the tiny encoder is a BERT")
    };
    let mut projection = ContextProjection::new(16, 8, &device);
    let target = Tensor::<3>::ones([5, tokens.len, 8], &device);
    let loss_of = |encoder: &Bert, projection: &ContextProjection| {
        let hidden = encoder.encode(&tokens, &device).hidden;
        (projection.forward(hidden) - target.clone())
            .powf_scalar(2.0)
            .mean()
    };
    let mut optim_e = SgdConfig::new().init();
    let mut optim_p = SgdConfig::new().init();
    let first = loss_of(&encoder, &projection);
    let first_value = first.clone().into_scalar::<f32>();
    let mut grads = first.backward();
    let e_grads = GradientsParams::from_module(&mut grads, &encoder);
    assert_eq!(
        e_grads.len(),
        encoder.num_params_tensors(),
        "every encoder tensor gets a gradient"
    );
    let p_grads = GradientsParams::from_module(&mut grads, &projection);
    encoder = optim_e.step(0.05, encoder, e_grads);
    projection = optim_p.step(0.05, projection, p_grads);
    for _ in 0..5 {
        let mut grads = loss_of(&encoder, &projection).backward();
        let e_grads = GradientsParams::from_module(&mut grads, &encoder);
        let p_grads = GradientsParams::from_module(&mut grads, &projection);
        encoder = optim_e.step(0.05, encoder, e_grads);
        projection = optim_p.step(0.05, projection, p_grads);
    }
    let last = loss_of(&encoder, &projection).into_scalar::<f32>();
    assert!(last < 0.9 * first_value, "loss {first_value} -> {last}");
    // The trained projection round-trips through its file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("context_projection.safetensors");
    let projection = projection.valid();
    projection.save(&file).unwrap();
    let inner = Device::flex();
    let back = ContextProjection::load(&file, 16, 8, &inner).unwrap();
    let x = Tensor::<3>::ones([1, 2, 16], &inner);
    assert_eq!(
        projection.forward(x.clone()).into_data(),
        back.forward(x).into_data()
    );
}

trait NumTensors {
    fn num_params_tensors(&self) -> usize;
}

impl<M: Module> NumTensors for M {
    fn num_params_tensors(&self) -> usize {
        ldmscale_model::weights::parameter_shapes(self).len()
    }
}

#[test]
fn bad_text_directories_are_named() {
    let device = Device::flex();
    let src = fixtures().join("bert_tiny");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join(CONFIG_FILE), dir.path().join(CONFIG_FILE)).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let key = "encoder.layer.1.attention.self.value.weight";
    let kept: Vec<_> = st.tensors().into_iter().filter(|(k, _)| k != key).collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    let err = load_bert(dir.path(), &device).unwrap_err().to_string();
    assert_mentions(&err, &[key, "missing"]);

    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join(CONFIG_FILE)).unwrap()).unwrap();
    config["hidden_act"] = "swish".into();
    std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
    let err = load_bert(dir.path(), &device).unwrap_err().to_string();
    assert_mentions(&err, &["hidden_act", CONFIG_FILE]);

    config["model_type"] = "t5".into();
    std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
    let err = TextConditioner::load(dir.path(), None, &device)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["model_type", "t5"]);
}

#[test]
fn token_batches_pad_right_and_build_tensors() {
    let batch = TokenBatch::from_rows(&[vec![5, 6, 7], vec![8]], 0, None);
    assert_eq!((batch.batch, batch.len), (2, 3));
    assert_eq!(batch.ids, vec![5, 6, 7, 8, 0, 0]);
    assert_eq!(batch.mask, vec![1, 1, 1, 1, 0, 0]);
    let fixed = TokenBatch::from_rows(&[vec![5]], 9, Some(4));
    assert_eq!(fixed.ids, vec![5, 9, 9, 9]);
    let ids: Tensor<2, Int> = batch.ids_tensor(&Device::flex());
    assert_eq!(
        ids.into_data().convert::<i64>(),
        TensorData::new(vec![5i64, 6, 7, 8, 0, 0], [2, 3])
    );
    let config = BertConfig::small(10, 8, 1, 2, 4);
    let model = Bert::new(&config, &Device::flex());
    assert_eq!((model.hidden_size(), model.max_positions()), (8, 4));
    assert!(model.cost(4).flops() > 0);
}
