//! The decoder prompt: the retrieval template filled with the first k retrieved captions, or the
//! no-retrieval prompt, and the reference's post-processing of the decoded text into a caption.

/// `src/template.txt` of the reference, read with `.strip() + ' '`.
pub const TEMPLATE: &str = "Similar images show\n\n||\n\nThis image shows ";
/// The prompt without retrieval (`--disable_rag`), and the marker the caption follows.
pub const SIMPLE_PREFIX: &str = "This image shows ";
/// GPT-2's pad token string in SmallCap (`!`, id 0).
pub const PAD_TOKEN: &str = "!";
/// SmallCap's eos token string (`.`, id 13).
pub const EOS_TOKEN: &str = ".";

/// The prompt for `captions[..k]`, or the no-retrieval prompt for `None`.
pub fn prompt_text(captions: Option<&[String]>, k: usize) -> String {
    match captions {
        None => SIMPLE_PREFIX.to_string(),
        Some(caps) => {
            let used = &caps[..k.min(caps.len())];
            let infix = format!("{}.", used.join("\n\n"));
            TEMPLATE.replace("||", &infix)
        }
    }
}

/// infer.py's `postprocess_preds`: the text after the last `This image shows `, every `!`
/// removed, a leading `bos_token` (GPT-2's `<|endoftext|>`, OPT's `</s>`) and one trailing `.`
/// stripped. When the marker is gone
/// (the first token was eos, merged with the space by the decoder's clean-up) the caption is the
/// whole decoded text, as in the reference.
pub fn postprocess(decoded: &str, bos_token: &str) -> String {
    let after = match decoded.rfind(SIMPLE_PREFIX) {
        Some(i) => &decoded[i + SIMPLE_PREFIX.len()..],
        None => decoded,
    };
    let mut pred = after.replace(PAD_TOKEN, "");
    if let Some(rest) = pred.strip_prefix(bos_token) {
        pred = rest.to_string();
    }
    if let Some(rest) = pred.strip_suffix(EOS_TOKEN) {
        pred = rest.to_string();
    }
    pred
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_the_reference_file_after_strip() {
        // src/template.txt at 19cc4f4 is these 43 bytes (a space before the final newline).
        let file = "Similar images show\n\n||\n\nThis image shows \n";
        assert_eq!(file.len(), 43);
        assert_eq!(format!("{} ", file.trim()), TEMPLATE);
    }

    #[test]
    fn prompt_appends_one_period_after_the_last_caption() {
        let caps: Vec<String> = ["a b.", "c d", "e f", "g h", "unused"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            prompt_text(Some(&caps), 4),
            "Similar images show\n\na b.\n\nc d\n\ne f\n\ng h.\n\nThis image shows "
        );
        assert_eq!(prompt_text(None, 4), "This image shows ");
    }

    #[test]
    fn postprocess_follows_infer_py() {
        let gpt2 = "<|endoftext|>";
        assert_eq!(postprocess("x This image shows a dog!!.", gpt2), "a dog");
        assert_eq!(
            postprocess("This image shows a.This image shows b.", gpt2),
            "b"
        );
        assert_eq!(postprocess("no marker here.", gpt2), "no marker here");
        assert_eq!(
            postprocess("This image shows <|endoftext|>a cat..", gpt2),
            "a cat."
        );
        // OPT's tokenizer puts </s> first: without the marker, it is stripped.
        assert_eq!(
            postprocess("</s>Similar images show a.", "</s>"),
            "Similar images show a"
        );
    }
}
